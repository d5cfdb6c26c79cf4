using System.Globalization;
using Suanli.Server.Storage;

namespace Suanli.Server.Ledger;

/// <summary>One journal row with the chain pointers a store keeps beside it (each side's previous transfer).</summary>
public sealed record JournalRow(LedgerTransfer Transfer, long? DebitPrev, long? CreditPrev);

/// <summary>One account row with the head of its chain (its latest transfer's seq).</summary>
public sealed record AccountRow(LedgerAccount Account, long? LastSeq);

/// <summary>
/// Everything <c>ledger verify</c> reads, as rows: a store loads them in one consistent snapshot (any engine can), the
/// verifier checks them. <paramref name="UsageMs"/> is each metered attempt's length; <paramref name="Contracts"/> the
/// offers that carry a reserved contract.
/// </summary>
public sealed record LedgerSnapshot(IReadOnlyList<AccountRow> Accounts, IEnumerable<JournalRow> Journal, IReadOnlyDictionary<(long Job, int Attempt), long> UsageMs,
    IReadOnlyList<SettlementRecord> Settlements, IReadOnlyList<OfferRecord> Contracts);

/// <summary>
/// The ledger's invariants, checked over rows (pure: no store, no SQL), so every store adapter is verified by the same
/// code. The journal is replayed in order: balances, holds and chains must match the stored accounts; money is neither
/// created nor lost; escrow passes everything on; every settlement agrees with the metered usage and the split rule;
/// every reserved contract was escrowed at its value, charged by the take-or-pay rule and paid out in full.
/// </summary>
public static class LedgerVerifier
{
    /// <summary>At most this many problems are listed (the count of checks is unaffected).</summary>
    public const int MaxProblems = 100;

    public static LedgerReport Verify(LedgerSnapshot snapshot, int feeBps)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        var problems = new List<string>();
        void Problem(string p)
        {
            if (problems.Count < MaxProblems)
            {
                problems.Add(p);
            }
        }

        var accounts = snapshot.Accounts.ToDictionary(a => a.Account.Id, a => a.Account, StringComparer.Ordinal);
        var replay = accounts.Keys.ToDictionary(k => k, _ => (Posted: 0L, PD: 0L, PC: 0L), StringComparer.Ordinal);
        var pendings = new Dictionary<string, (string D, string C, long A)>(StringComparer.Ordinal);
        var lastSeen = new Dictionary<string, long?>(StringComparer.Ordinal);
        var resolved = new Dictionary<string, (string Kind, long Amount)>(StringComparer.Ordinal);
        var contractAmounts = new Dictionary<string, long>(StringComparer.Ordinal);
        long transfers = 0;
        foreach (var (t, dp, cp) in snapshot.Journal)
        {
            transfers++;
            if (t.Code is "contract-hold" or "contract-provider-share" || t.Id.StartsWith("contract-fee:", StringComparison.Ordinal))
            {
                contractAmounts[t.Id] = t.Amount;
            }

            if (!replay.ContainsKey(t.Debit) || !replay.ContainsKey(t.Credit))
            {
                Problem($"transfer {t.Id}: names an account that does not exist");
                continue;
            }

            if (t.Debit == t.Credit || t.Amount < 0)
            {
                Problem($"transfer {t.Id}: does not balance (debit {t.Debit}, credit {t.Credit}, amount {t.Amount})");
            }

            // Each side's chain pointer must name the account's previous transfer.
            if (dp != lastSeen.GetValueOrDefault(t.Debit) || cp != lastSeen.GetValueOrDefault(t.Credit))
            {
                Problem($"transfer {t.Id}: its account chain pointers ({dp}, {cp}) skip or repeat a transfer of {t.Debit} or {t.Credit}");
            }

            lastSeen[t.Debit] = t.Seq;
            lastSeen[t.Credit] = t.Seq;
            var d = replay[t.Debit];
            var cr = replay[t.Credit];
            switch (t.Kind)
            {
                case TransferKinds.Posted:
                    d.Posted -= t.Amount;
                    cr.Posted += t.Amount;
                    break;
                case TransferKinds.Pending:
                    d.PD += t.Amount;
                    cr.PC += t.Amount;
                    pendings[t.Id] = (t.Debit, t.Credit, t.Amount);
                    break;
                default:
                    if (t.PendingId is null || !pendings.TryGetValue(t.PendingId, out var p) || p.D != t.Debit || p.C != t.Credit)
                    {
                        Problem($"transfer {t.Id}: resolves no earlier pending transfer of the same accounts");
                        break;
                    }

                    if (!resolved.TryAdd(t.PendingId, (t.Kind, t.Amount)) || t.Amount > p.A)
                    {
                        Problem($"transfer {t.Id}: resolves hold {t.PendingId} twice or beyond its amount");
                    }

                    d.PD -= p.A;
                    cr.PC -= p.A;
                    d.Posted -= t.Amount;
                    cr.Posted += t.Amount;
                    break;
            }

            replay[t.Debit] = d;
            replay[t.Credit] = t.Debit == t.Credit ? d : cr;
        }

        foreach (var (a, lastSeq) in snapshot.Accounts)
        {
            var r = replay[a.Id];
            if (r != (a.Posted, a.PendingDebits, a.PendingCredits))
            {
                Problem($"account {a.Id}: stored balances (posted {a.Posted}, held {a.PendingDebits}/{a.PendingCredits}) differ from the journal ({r.Posted}, {r.PD}/{r.PC})");
            }

            if (lastSeq != lastSeen.GetValueOrDefault(a.Id))
            {
                Problem($"account {a.Id}: its chain starts at transfer {lastSeq}, the journal's latest for it is {lastSeen.GetValueOrDefault(a.Id)}");
            }

            if (a.Floor is { } f && a.Available < f)
            {
                Problem($"account {a.Id}: available {a.Available} is below its floor {f}");
            }
        }

        // Sums in checked arithmetic: a tampered balance near the range's edge is reported, not wrapped.
        long sumPosted = 0, sumPD = 0, sumPC = 0;
        try
        {
            foreach (var a in accounts.Values)
            {
                sumPosted = checked(sumPosted + a.Posted);
                sumPD = checked(sumPD + a.PendingDebits);
                sumPC = checked(sumPC + a.PendingCredits);
            }
        }
        catch (OverflowException)
        {
            Problem("the balances overflow 64 bits when summed: an account was tampered with");
        }

        if (sumPosted != 0)
        {
            Problem($"the sum of all posted balances is {sumPosted}, not 0: money was created or lost");
        }

        if (sumPD != sumPC)
        {
            Problem($"held debits {sumPD} and held credits {sumPC} differ");
        }

        if (accounts.TryGetValue(Accounts.Escrow, out var escrow) && escrow.Posted != 0)
        {
            Problem($"escrow holds {escrow.Posted} posted fen; every settlement must pass it on in full");
        }

        var (checkedCount, open, openFen, settledFen) = CheckSettlements(snapshot, feeBps, resolved, Problem);
        foreach (var o in snapshot.Contracts)
        {
            checkedCount++;
            var escrowed = contractAmounts.GetValueOrDefault($"contract:{o.Id}", -1);
            if (escrowed != o.ContractFen)
            {
                Problem($"contract {o.Id}: escrowed {escrowed}, its value is {o.ContractFen}");
            }

            if (o.ContractState != "settled")
            {
                open++;
                openFen += o.ContractFen ?? 0;
                continue;
            }

            var charged = o.ContractCharge();
            settledFen += charged;
            var posted = resolved.TryGetValue($"contract:{o.Id}", out var pr) && pr.Kind == TransferKinds.Post ? pr.Amount : -1;
            var payout = contractAmounts.GetValueOrDefault($"contract-payout:{o.Id}", -1);
            var fee = contractAmounts.GetValueOrDefault($"contract-fee:{o.Id}", -1);
            if (charged != o.ContractChargedFen || posted != charged || payout + fee != charged)
            {
                Problem($"contract {o.Id}: the take-or-pay charge is {charged}; stored {o.ContractChargedFen}, posted {posted}, paid out {payout} + fee {fee}");
            }
        }

        return new LedgerReport(problems.Count == 0, accounts.Count, transfers, sumPosted, sumPD, sumPC, open, openFen, checkedCount, settledFen, problems);
    }

    /// <summary>Settlements against metered usage, the split rule and the journal's posts.</summary>
    private static (int Checked, int Open, long OpenFen, long SettledFen) CheckSettlements(LedgerSnapshot snapshot, int feeBps,
        Dictionary<string, (string Kind, long Amount)> resolved, Action<string> problem)
    {
        int checkedCount = 0, open = 0;
        long openFen = 0, settledFen = 0;
        foreach (var s in snapshot.Settlements)
        {
            checkedCount++;
            var key = $"{s.JobId}:{s.Attempt}";
            if (s.State == SettlementStates.Held)
            {
                open++;
                openFen += s.HoldFen;
                if (resolved.ContainsKey($"hold:{key}"))
                {
                    problem($"settlement {key}: held, but its hold was resolved");
                }

                continue;
            }

            if (s.State == SettlementStates.Voided)
            {
                if (!resolved.TryGetValue($"hold:{key}", out var v) || v.Kind != TransferKinds.Void)
                {
                    problem($"settlement {key}: voided, but its hold was not voided");
                }

                continue;
            }

            settledFen += s.CostFen ?? 0;
            if (!snapshot.UsageMs.TryGetValue((s.JobId, s.Attempt), out var ms) || ms != s.MeteredMs)
            {
                problem($"settlement {key}: metered {s.MeteredMs} ms, usage says {(snapshot.UsageMs.TryGetValue((s.JobId, s.Attempt), out var u) ? u.ToString(CultureInfo.InvariantCulture) : "nothing")}");
                continue;
            }

            var split = Postings.Split(s, ms, feeBps);
            if ((split.Charged, split.Tenant, split.Voucher, split.Provider, split.Fee) != (s.CostFen, s.TenantFen, s.VoucherFen, s.ProviderFen, s.FeeFen))
            {
                problem($"settlement {key}: stored split {s.CostFen}/{s.TenantFen}/{s.VoucherFen}/{s.ProviderFen}/{s.FeeFen} differs from the metered usage's {split.Charged}/{split.Tenant}/{split.Voucher}/{split.Provider}/{split.Fee}");
            }

            var paid = resolved.TryGetValue($"hold:{key}", out var h) && h.Kind == TransferKinds.Post ? h.Amount : -1;
            var voucher = s.VoucherId is null ? 0 : resolved.TryGetValue($"vhold:{key}", out var vh) ? vh.Amount : -1;
            if (paid != s.TenantFen || voucher != s.VoucherFen)
            {
                problem($"settlement {key}: the journal posts {paid} from the tenant and {voucher} from the voucher, the settlement says {s.TenantFen} and {s.VoucherFen}");
            }
        }

        return (checkedCount, open, openFen, settledFen);
    }
}
