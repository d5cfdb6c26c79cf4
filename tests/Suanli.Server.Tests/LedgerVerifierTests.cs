using Suanli.Core.Market;
using Suanli.Server.Ledger;
using Suanli.Server.Storage;

namespace Suanli.Server.Tests;

/// <summary>
/// The verifier over rows, with no store: one settled attempt written out by hand, then each kind of damage a store
/// could suffer (or a tamperer cause), each caught with its own words.
/// </summary>
public sealed class LedgerVerifierTests
{
    private const int FeeBps = 1000;
    private const string Tenant = "tenant:1";
    private const string Provider = "provider:1";

    private static LedgerTransfer T(long seq, string id, string kind, string debit, string credit, long amount, string code, string? pending = null) =>
        new(seq, id, kind, debit, credit, amount, pending, code, null, null, null, seq);

    private static LedgerSnapshot Clean() => new(
        [
            new AccountRow(new LedgerAccount(Accounts.Cash, "cash", null, -1000, 0, 0, 0), 1),
            new AccountRow(new LedgerAccount(Tenant, "wallet", 0, 800, 0, 0, 0), 3),
            new AccountRow(new LedgerAccount(Accounts.Escrow, "escrow", 0, 0, 0, 0, 0), 5),
            new AccountRow(new LedgerAccount(Provider, "receivable", 0, 180, 0, 0, 0), 4),
            new AccountRow(new LedgerAccount(Accounts.Fee, "fee", 0, 20, 0, 0, 0), 5),
        ],
        [
            new JournalRow(T(1, "topup", TransferKinds.Posted, Accounts.Cash, Tenant, 1000, "topup"), null, null),
            new JournalRow(T(2, "hold:7:1", TransferKinds.Pending, Tenant, Accounts.Escrow, 300, "hold"), 1, null),
            new JournalRow(T(3, "pay:7:1", TransferKinds.Post, Tenant, Accounts.Escrow, 200, "charge", "hold:7:1"), 2, 2),
            new JournalRow(T(4, "payout:7:1", TransferKinds.Posted, Accounts.Escrow, Provider, 180, "provider-share"), 3, null),
            new JournalRow(T(5, "fee:7:1", TransferKinds.Posted, Accounts.Escrow, Accounts.Fee, 20, "platform-fee"), 4, null),
        ],
        new Dictionary<(long, int), long> { [(7, 1)] = 3_600_000 },
        [new SettlementRecord(7, 1, 1, 1, "g", 1, Tiers.OnDemand, PriceUnits.CoreHour, 200, 200, 1000, 300, null, 0, 0, SettlementStates.Settled,
            3_600_000, 200, 200, 0, 180, 20, 2, 3, null)],
        []);

    private static LedgerReport Verify(LedgerSnapshot s) => LedgerVerifier.Verify(s, FeeBps);

    private static void Broken(LedgerSnapshot s, string words)
    {
        var report = Verify(s);
        Assert.False(report.Ok);
        Assert.Contains(report.Problems, p => p.Contains(words, StringComparison.Ordinal));
    }

    [Fact]
    public void ACleanLedger_Verifies()
    {
        var report = Verify(Clean());
        Assert.True(report.Ok, string.Join("; ", report.Problems));
        Assert.Equal((5, 5L, 1, 200L), (report.Accounts, report.Transfers, report.SettlementsChecked, report.SettledFen));
    }

    [Fact]
    public void EachKindOfDamage_IsNamed()
    {
        var c = Clean();
        Broken(c with { Accounts = [.. c.Accounts.Select(a => a.Account.Id == Tenant ? a with { Account = a.Account with { Posted = 900 } } : a)] },
            "account tenant:1: stored balances");
        Broken(c with { Accounts = [.. c.Accounts.Select(a => a.Account.Id == Provider ? a with { LastSeq = 2 } : a)] }, "its chain starts at transfer 2");
        Broken(c with { Journal = [.. c.Journal.Select(j => j.Transfer.Seq == 4 ? j with { DebitPrev = 2 } : j)] }, "chain pointers");
        Broken(c with { Journal = [.. c.Journal.Where(j => j.Transfer.Seq != 1)] }, "stored balances");
        Broken(c with { Journal = [.. c.Journal, new JournalRow(T(6, "pay-again", TransferKinds.Post, Tenant, Accounts.Escrow, 0, "charge", "hold:7:1"), 3, 5)] },
            "resolves hold hold:7:1 twice");
        Broken(c with { Journal = [.. c.Journal, new JournalRow(T(6, "x", TransferKinds.Posted, "tenant:99", Tenant, 5, "x"), null, 3)] }, "names an account that does not exist");
        Broken(c with { UsageMs = new Dictionary<(long, int), long> { [(7, 1)] = 1_800_000 } }, "metered 3600000 ms, usage says 1800000");
        Broken(c with { Settlements = [c.Settlements[0] with { ProviderFen = 190, FeeFen = 10 }] }, "stored split");
        Broken(c with { Settlements = [c.Settlements[0] with { State = SettlementStates.Held }] }, "held, but its hold was resolved");
        Broken(c with { Settlements = [c.Settlements[0] with { State = SettlementStates.Voided }] }, "voided, but its hold was not voided");
        Broken(c with { Contracts = [new OfferRecord(3, 1, "g", Tiers.Reserved, PriceUnits.CoreHour, 1, 1, 0, 10, 1, 0, null) { ContractFen = 50, ContractState = "held" }] },
            "contract 3: escrowed -1, its value is 50");
    }

    [Fact]
    public void BalancesTamperedToOverflow_AreReported_NotThrown()
    {
        var c = Clean();
        var report = Verify(c with
        {
            Accounts = [.. c.Accounts.Select(a => a.Account.Id is Provider or Accounts.Fee ? a with { Account = a.Account with { Posted = long.MaxValue } } : a)],
        });
        Assert.False(report.Ok);
        Assert.Contains(report.Problems, p => p.Contains("overflow", StringComparison.Ordinal));
    }
}
