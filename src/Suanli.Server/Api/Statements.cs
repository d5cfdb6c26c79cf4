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

/// <summary>A tenant's monthly invoice.</summary>
public sealed record TenantStatement(long TenantId, string Tenant, string Month, long OpeningFen, long TopUpsFen, long ChargedFen, long VoucherFen, long PaidFen,
    long ClosingFen, long HeldFen, IReadOnlyList<InvoiceLine> Lines);

/// <summary>One delivered attempt on a provider's payout statement.</summary>
public sealed record PayoutLine(DateTimeOffset Settled, long JobId, int Attempt, string Tenant, string Tier, string Unit, decimal Units, decimal Hours,
    string PricePerUnit, string Gross, string Fee, string Net, long GrossFen, long FeeFen, long NetFen);

/// <summary>A provider's monthly payout statement.</summary>
public sealed record ProviderStatement(long ProviderId, string Provider, string Month, long OpeningFen, long EarnedFen, long FeesFen, long PaidOutFen, long ClosingFen,
    IReadOnlyList<PayoutLine> Lines);

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

    public static async Task<TenantStatement> TenantAsync(ILedgerStore l, TenantRecord tenant, long fromMs, long toMs, string month, IReadOnlyDictionary<long, string> providers)
    {
        var settled = (await l.SettlementsAsync(new SettlementQuery(TenantId: tenant.Id, FromMs: fromMs, ToMs: toMs))).Where(s => s.State == SettlementStates.Settled).ToList();
        var lines = settled.Select(s => new InvoiceLine(DateTimeOffset.FromUnixTimeMilliseconds(s.SettledMs ?? 0), s.JobId, s.Attempt, providers.GetValueOrDefault(s.ProviderId, $"provider {s.ProviderId}"),
            s.Tier, s.Unit, Units(s), Hours(s), Money.Yuan(s.PriceFen), Money.Yuan(s.CostFen ?? 0), Money.Yuan(s.VoucherFen ?? 0), Money.Yuan(s.TenantFen ?? 0),
            s.CostFen ?? 0, s.VoucherFen ?? 0, s.TenantFen ?? 0)).ToList();
        var (opening, moves, closing) = await Account(l, Accounts.Tenant(tenant.Id), fromMs, toMs);
        var held = (await l.AccountAsync(Accounts.Tenant(tenant.Id)))?.PendingDebits ?? 0;
        return new TenantStatement(tenant.Id, tenant.Name, month, opening, moves.GetValueOrDefault("topup"), lines.Sum(x => x.CostFen), lines.Sum(x => x.VoucherFen),
            lines.Sum(x => x.PaidFen), closing, held, lines);
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
        return new ProviderStatement(provider.Id, provider.Name, month, opening, lines.Sum(x => x.NetFen), lines.Sum(x => x.FeeFen), -moves.GetValueOrDefault("payout"), closing, lines);
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
