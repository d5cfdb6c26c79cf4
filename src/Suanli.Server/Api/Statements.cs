using System.Globalization;
using System.Text;
using CsvHelper;
using Microsoft.AspNetCore.Http;
using Suanli.Core.Market;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>One charged attempt on a tenant's invoice.</summary>
public sealed record InvoiceLine(DateTimeOffset Settled, long JobId, int Attempt, string Provider, string Tier, string Unit, decimal Units, decimal Hours,
    string PricePerUnit, string Cost, string Voucher, string Paid, long CostFen, long VoucherFen, long PaidFen);

/// <summary>A reserved contract that ended in the month: its value, what was charged (take-or-pay) and the platform's fee.</summary>
public sealed record ContractLine(long OfferId, string Counterparty, string Group, DateTimeOffset ValidFrom, DateTimeOffset ValidTo, DateTimeOffset? Withdrawn,
    long ValueFen, long ChargedFen, long FeeFen);

/// <summary>A tenant's monthly invoice.</summary>
public sealed record TenantStatement(long TenantId, string Tenant, string Month, long OpeningFen, long TopUpsFen, long ChargedFen, long VoucherFen, long PaidFen,
    long ClosingFen, long HeldFen, IReadOnlyList<InvoiceLine> Lines)
{
    /// <summary>Reserved contracts settled in the month (charged on top of the attempts).</summary>
    public IReadOnlyList<ContractLine> Contracts { get; init; } = [];

    public long ContractsFen => Contracts.Sum(c => c.ChargedFen);
}

/// <summary>One delivered attempt on a provider's payout statement.</summary>
public sealed record PayoutLine(DateTimeOffset Settled, long JobId, int Attempt, string Tenant, string Tier, string Unit, decimal Units, decimal Hours,
    string PricePerUnit, string Gross, string Fee, string Net, long GrossFen, long FeeFen, long NetFen);

/// <summary>A provider's monthly payout statement.</summary>
public sealed record ProviderStatement(long ProviderId, string Provider, string Month, long OpeningFen, long EarnedFen, long FeesFen, long PaidOutFen, long ClosingFen,
    IReadOnlyList<PayoutLine> Lines)
{
    /// <summary>Reserved contracts settled in the month.</summary>
    public IReadOnlyList<ContractLine> Contracts { get; init; } = [];

    /// <summary>What the contracts earned after the fee.</summary>
    public long ContractsNetFen => Contracts.Sum(c => c.ChargedFen - c.FeeFen);
}

/// <summary>Builds statements from settlements and the journal, and renders them as JSON or CSV (CsvHelper, RFC 4180).</summary>
public static class Statements
{
    private static decimal Hours(SettlementRecord s) => decimal.Round((s.MeteredMs ?? 0) / 3_600_000m, 6);

    private static decimal Units(SettlementRecord s) => decimal.Round(s.UnitsMilli / 1000m * (s.MeteredMs ?? 0) / 3_600_000m, 6);

    /// <summary>The account's posted balance before <paramref name="fromMs"/> and the posted movements in [from, to), by transfer code.</summary>
    private static async Task<(long Opening, Dictionary<string, long> Moves, long Closing)> Account(ILedgerStore l, string account, long fromMs, long toMs)
    {
        long opening = 0, closing = 0, before = 0;
        var moves = new Dictionary<string, long>(StringComparer.Ordinal);
        while (true)
        {
            var page = await l.TransfersAsync(account, before, 1000);
            foreach (var t in page.Items.Where(t => t.Kind is TransferKinds.Posted or TransferKinds.Post))
            {
                var signed = t.Credit == account ? t.Amount : -t.Amount;
                if (t.AtMs < fromMs)
                {
                    opening += signed;
                }
                else if (t.AtMs < toMs)
                {
                    moves[t.Code] = moves.GetValueOrDefault(t.Code) + signed;
                }

                if (t.AtMs < toMs)
                {
                    closing += signed;
                }
            }

            if (page.Next is null)
            {
                return (opening, moves, closing);
            }

            before = page.Items[^1].Seq;
        }
    }

    /// <summary>Settled contracts whose end (their window's, or the withdrawal) falls in [from, to).</summary>
    private static async Task<List<OfferRecord>> ContractsAsync(ILedgerStore l, Func<OfferRecord, bool> mine, long fromMs, long toMs) =>
        // By the time the charge was posted, the same instant the ledger (and so the closing balance) has it: a contract
        // whose window ends in the last moment of a month is listed in the month whose balance it moved.
        [.. (await l.OffersAsync()).Where(o => o.ContractState == "settled" && mine(o) && o.ContractSettledMs is { } at && at >= fromMs && at < toMs)];

    private static ContractLine Line(OfferRecord o, string counterparty) => new(o.Id, counterparty, o.GroupId, DateTimeOffset.FromUnixTimeMilliseconds(o.ValidFromMs),
        DateTimeOffset.FromUnixTimeMilliseconds(o.ValidToMs), o.WithdrawnMs is { } w ? DateTimeOffset.FromUnixTimeMilliseconds(w) : null, o.ContractFen ?? 0,
        o.ContractChargedFen ?? 0, o.ContractFeeFen ?? 0);

    public static async Task<TenantStatement> TenantAsync(ILedgerStore l, TenantRecord tenant, long fromMs, long toMs, string month, IReadOnlyDictionary<long, string> providers)
    {
        var settled = (await l.SettlementsAsync(new SettlementQuery(TenantId: tenant.Id, FromMs: fromMs, ToMs: toMs))).Where(s => s.State == SettlementStates.Settled).ToList();
        var lines = settled.Select(s => new InvoiceLine(DateTimeOffset.FromUnixTimeMilliseconds(s.SettledMs ?? 0), s.JobId, s.Attempt, providers.GetValueOrDefault(s.ProviderId, $"provider {s.ProviderId}"),
            s.Tier, s.Unit, Units(s), Hours(s), Money.Yuan(s.PriceFen), Money.Yuan(s.CostFen ?? 0), Money.Yuan(s.VoucherFen ?? 0), Money.Yuan(s.TenantFen ?? 0),
            s.CostFen ?? 0, s.VoucherFen ?? 0, s.TenantFen ?? 0)).ToList();
        var (opening, moves, closing) = await Account(l, Accounts.Tenant(tenant.Id), fromMs, toMs);
        var held = (await l.AccountAsync(Accounts.Tenant(tenant.Id)))?.PendingDebits ?? 0;
        var contracts = (await ContractsAsync(l, o => o.TenantId == tenant.Id, fromMs, toMs)).Select(o => Line(o, providers.GetValueOrDefault(o.ProviderId, $"provider {o.ProviderId}"))).ToList();
        return new TenantStatement(tenant.Id, tenant.Name, month, opening, moves.GetValueOrDefault("topup"), lines.Sum(x => x.CostFen), lines.Sum(x => x.VoucherFen),
            lines.Sum(x => x.PaidFen), closing, held, lines) { Contracts = contracts };
    }

    public static async Task<ProviderStatement> ProviderAsync(ILedgerStore l, ProviderRecord provider, long fromMs, long toMs, string month, IReadOnlyDictionary<long, TenantRecord> tenants)
    {
        var settled = (await l.SettlementsAsync(new SettlementQuery(ProviderId: provider.Id, FromMs: fromMs, ToMs: toMs))).Where(s => s.State == SettlementStates.Settled).ToList();
        var lines = settled.Select(s =>
        {
            var gross = (s.ProviderFen ?? 0) + (s.FeeFen ?? 0);
            return new PayoutLine(DateTimeOffset.FromUnixTimeMilliseconds(s.SettledMs ?? 0), s.JobId, s.Attempt, tenants.TryGetValue(s.TenantId, out var t) ? t.Name : $"tenant {s.TenantId}",
                s.Tier, s.Unit, Units(s), Hours(s), Money.Yuan(s.SellerPriceFen), Money.Yuan(gross), Money.Yuan(s.FeeFen ?? 0), Money.Yuan(s.ProviderFen ?? 0),
                gross, s.FeeFen ?? 0, s.ProviderFen ?? 0);
        }).ToList();
        var (opening, moves, closing) = await Account(l, Accounts.Provider(provider.Id), fromMs, toMs);
        var contracts = (await ContractsAsync(l, o => o.ProviderId == provider.Id, fromMs, toMs))
            .Select(o => Line(o, o.TenantId is { } t && tenants.TryGetValue(t, out var r) ? r.Name : $"tenant {o.TenantId}")).ToList();
        return new ProviderStatement(provider.Id, provider.Name, month, opening, lines.Sum(x => x.NetFen), lines.Sum(x => x.FeeFen), -moves.GetValueOrDefault("payout"), closing, lines)
        {
            Contracts = contracts,
        };
    }

    /// <summary>JSON (the whole document) or, with format=csv, the lines as an RFC 4180 file.</summary>
    public static IResult Render<T>(object document, string? format, string name, IReadOnlyList<T> lines)
    {
        if (format is null or "json")
        {
            return Results.Ok(document);
        }

        if (format != "csv")
        {
            return Problems.Validation("format", "enum", "must be json or csv");
        }

        using var text = new StringWriter(CultureInfo.InvariantCulture);
        using (var csv = new CsvWriter(text, CultureInfo.InvariantCulture))
        {
            csv.WriteRecords(lines);
        }

        return Results.File(Encoding.UTF8.GetBytes(text.ToString()), "text/csv; charset=utf-8", $"{name}.csv");
    }
}
