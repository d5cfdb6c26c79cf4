using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Suanli.Core.Market;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>An offer as the API shows it (money in yuan strings and fen).</summary>
public sealed record OfferView(long Id, long ProviderId, string Group, string Tier, string Unit, long PriceFen, string Price, int Nodes, DateTimeOffset ValidFrom,
    DateTimeOffset ValidTo, long? TenantId, bool Live, DateTimeOffset? Withdrawn, long? ContractFen, string? ContractState, long? ContractChargedFen, string? Consent = null,
    DateTimeOffset? Accepted = null)
{
    public static OfferView Of(OfferRecord o, long now) => new(o.Id, o.ProviderId, o.GroupId, o.Tier, o.Unit, o.PriceFen, Money.Yuan(o.PriceFen), o.Nodes,
        DateTimeOffset.FromUnixTimeMilliseconds(o.ValidFromMs), DateTimeOffset.FromUnixTimeMilliseconds(o.ValidToMs), o.TenantId, o.LiveAt(now),
        o.WithdrawnMs is { } w ? DateTimeOffset.FromUnixTimeMilliseconds(w) : null, o.ContractFen, o.ContractState, o.ContractChargedFen, o.Consent,
        o.AcceptedMs is { } a ? DateTimeOffset.FromUnixTimeMilliseconds(a) : null);

    /// <summary>Who may see an offer: public tiers everyone; a reserved contract only its two parties and the operator.</summary>
    public static bool Visible(OfferRecord o, Principal who) =>
        o.Tier != Tiers.Reserved || who.IsOperator || (who.ProviderId is { } p && p == o.ProviderId) || (who.TenantId is { } t && t == o.TenantId);
}

public sealed record WalletView(long TenantId, string Account, long BalanceFen, long HeldFen, long AvailableFen, string Balance, string Available, IReadOnlyList<VoucherRecord> Vouchers);

public sealed record MoneyMoved(string TransferId, string Result, long AmountFen, long BalanceFen);

public sealed record ProgrammeView(ProgrammeRecord Programme, long RemainingFen, long IssuedFen, long SubsidisedFen);

public sealed record WriteOffRow(long JobId, int Attempt, long TenantId, long ProviderId, long VoucherId, string Tier, string Unit, long PriceFen, long UnitsMilli,
    DateTimeOffset Started, DateTimeOffset Ended, long MeteredMs, string? Model, int Cards, decimal CoreHours, decimal CardHours, decimal Fp16TflopsHours,
    long CostFen, long SubsidyFen, long TenantPaidFen, string Transfer);

public sealed record SummaryRow(string Tier, string Unit, int Settlements, decimal Units, long CostFen, long? AveragePriceFen);

public sealed record MarketSummary(DateTimeOffset From, DateTimeOffset To, IReadOnlyList<SummaryRow> Volume, long ChargedFen, long FeesFen, long SubsidyFen,
    IReadOnlyDictionary<string, long> SubsidyByProgramme, int Rounds, long SpotLotsCleared, int OpenHolds, long OpenHoldFen, int ReservedContracts, long ContractsChargedFen,
    long ContractsHeldFen);

/// <summary>The trading centre's REST API: offers, the spot market, wallets, the ledger, vouchers and statements.</summary>
public static partial class Endpoints
{
    private static long NowMs(TimeProvider t) => t.GetUtcNow().ToUnixTimeMilliseconds();

    /// <summary>A CNY amount with at most two decimals, as fen.</summary>
    private static long? Yuan(JsonObject body, string field, List<FieldError> errors, bool required, long min = 0, long max = 100_000_000_000)
    {
        if (body[field] is null)
        {
            if (required)
            {
                errors.Add(new FieldError(field, "required", "is required: an amount in CNY with at most two decimals"));
            }

            return null;
        }

        if (body[field] is JsonValue v && (v.TryGetValue<decimal>(out var y) || (v.TryGetValue<string>(out var s) && decimal.TryParse(s, NumberStyles.AllowDecimalPoint | NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out y))))
        {
            if (Math.Abs(y) > 1_000_000_000_000m)
            {
                errors.Add(new FieldError(field, "range", $"must be at most {Money.Yuan(max)} CNY"));
                return null;
            }

            var fen = y * 100m;
            if (fen != decimal.Truncate(fen))
            {
                errors.Add(new FieldError(field, "precision", "must have at most two decimals (whole fen)"));
                return null;
            }

            if (fen < min || fen > max)
            {
                errors.Add(new FieldError(field, "range", min == 0 ? $"must not be negative (at most {Money.Yuan(max)} CNY)" : $"must be from {Money.Yuan(min)} to {Money.Yuan(max)} CNY"));
                return null;
            }

            return (long)fen;
        }

        errors.Add(new FieldError(field, "type", "must be a number of CNY"));
        return null;
    }

    private static DateTimeOffset? Time(JsonObject body, string field, List<FieldError> errors)
    {
        if (body[field] is null)
        {
            return null;
        }

        if (body[field] is JsonValue v && v.TryGetValue<string>(out var s) && DateTimeOffset.TryParse(s, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var t))
        {
            if (t.UtcDateTime.Year is < 2000 or > 2200)
            {
                errors.Add(new FieldError(field, "range", "must be a time from the year 2000 to 2200"));
                return null;
            }

            return t;
        }

        errors.Add(new FieldError(field, "format", "must be an ISO 8601 time such as 2026-12-01T00:00:00Z"));
        return null;
    }

    private static long? Long(JsonObject body, string field, List<FieldError> errors, bool required, long min = 1, long max = long.MaxValue)
    {
        if (body[field] is null)
        {
            if (required)
            {
                errors.Add(new FieldError(field, "required", "is required"));
            }

            return null;
        }

        if (body[field] is JsonValue v && v.TryGetValue<long>(out var x) && x >= min && x <= max)
        {
            return x;
        }

        errors.Add(new FieldError(field, "range", $"must be a whole number from {min} to {max}"));
        return null;
    }

    /// <summary>A share as a fraction 0 &lt; f ≤ 1 (e.g. 0.5), in basis points.</summary>
    private static int? Share(JsonObject body, string field, List<FieldError> errors, bool required)
    {
        if (body[field] is null)
        {
            if (required)
            {
                errors.Add(new FieldError(field, "required", "is required: a fraction above 0 and at most 1 (0.5 = half)"));
            }

            return null;
        }

        if (body[field] is JsonValue v && v.TryGetValue<decimal>(out var f) && f > 0 && f <= 1 && f * 10000 == decimal.Truncate(f * 10000))
        {
            return (int)(f * 10000);
        }

        errors.Add(new FieldError(field, "range", "must be a fraction above 0 and at most 1 with at most four decimals (0.5 = half)"));
        return null;
    }

    private static (long From, long To)? Month(string? month, out IResult? error)
    {
        error = null;
        if (month is null)
        {
            error = Problems.Validation("month", "required", "is required: a calendar month such as 2026-11 (UTC)");
            return null;
        }

        if (!DateTimeOffset.TryParseExact(month + "-01", "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var start))
        {
            error = Problems.Validation("month", "format", "must be a calendar month such as 2026-11 (UTC)");
            return null;
        }

        if (start.Year is < 2000 or > 2200)
        {
            error = Problems.Validation("month", "range", "must be a month from 2000-01 to 2200-12");
            return null;
        }

        return (start.ToUnixTimeMilliseconds(), start.AddMonths(1).ToUnixTimeMilliseconds());
    }

    private static void MapMarket(RouteGroupBuilder api, RequireRole op, RequireRole opOrTenant, RequireRole opOrProvider, RequireRole anyone)
    {
        // ---------------------------------------------------------------- offers
        api.MapPost("/offers", CreateOffer).AddEndpointFilter(opOrProvider).Produces<OfferView>(201).ProducesProblem(400).ProducesProblem(409)
            .WithTags("market").WithSummary("Publish an offer: one tier of a node group at a price per standard unit (a provider for itself, the operator for any)");
        api.MapGet("/offers", async (HttpContext h, ILedgerStore l, TimeProvider t, bool? live) =>
        {
            var now = NowMs(t);
            var who = Who(h);
            return Results.Ok(new ListPage<OfferView>([.. (await l.OffersAsync()).Where(o => (live != true || o.LiveAt(now)) && OfferView.Visible(o, who)).Select(o => OfferView.Of(o, now))], null));
        }).AddEndpointFilter(anyone).Produces<ListPage<OfferView>>().WithTags("market")
            .WithSummary("List offers (live=true: only those selling now); a reserved contract is shown to its provider, its tenant and the operator only");
        api.MapPost("/offers/{id:long}/accept", (long id, HttpContext h, ILedgerStore l, ControlPlane cp, TimeProvider t) => AnswerContract(id, true, h, l, cp, t))
            .AddEndpointFilter(opOrTenant).Produces<OfferView>().ProducesProblem(404).ProducesProblem(409).WithTags("market")
            .WithSummary("Accept a proposed reserved contract (its tenant, or the operator for it): its value is escrowed from the wallet now");
        api.MapPost("/offers/{id:long}/decline", (long id, HttpContext h, ILedgerStore l, ControlPlane cp, TimeProvider t) => AnswerContract(id, false, h, l, cp, t))
            .AddEndpointFilter(opOrTenant).Produces<OfferView>().ProducesProblem(404).ProducesProblem(409).WithTags("market")
            .WithSummary("Decline a proposed reserved contract (its tenant, or the operator for it); nothing is charged");
        api.MapDelete("/offers/{id:long}", async (long id, HttpContext h, ILedgerStore l, ControlPlane cp, TimeProvider t) =>
        {
            var who = Who(h);
            var o = await cp.WithdrawOfferAsync(id, who.IsOperator ? null : who.ProviderId);
            return Results.Ok(OfferView.Of(o, NowMs(t)));
        }).AddEndpointFilter(opOrProvider).Produces<OfferView>().WithTags("market").WithSummary("Withdraw an offer (running jobs finish at their leased price)");

        // ---------------------------------------------------------------- spot market
        api.MapGet("/market/book", (ControlPlane cp) => Results.Ok(cp.OrderBook())).AddEndpointFilter(anyone).Produces<IReadOnlyList<BookView>>()
            .WithTags("market").WithSummary("The spot order book by instrument: bids (spot jobs) and asks (interruptible offers) by price level");
        api.MapGet("/market/rounds", async (ILedgerStore l, string? instrument, int? limit) =>
            limit is < 1 or > 1000 ? Problems.Validation("limit", "range", "must be from 1 to 1000")
            : Results.Ok(await l.RoundsAsync(instrument, limit ?? 50))).AddEndpointFilter(anyone).Produces<IReadOnlyList<RoundRecord>>()
            .WithTags("market").WithSummary("Clearing history of the spot auction, newest first: volume, prices, whether the trade reduction applied");
        api.MapPost("/market/quote", async (HttpContext h, ControlPlane cp) =>
        {
            var who = Who(h);
            var (text, err) = await Problems.ReadBodyAsync(h.Request, JobDocument.MaxBodyBytes);
            if (err is not null)
            {
                return err;
            }

            try
            {
                var doc = ParseJobBody(h, text!, cp);
                var tenant = who.TenantId ?? (doc.Tenant is { } name ? cp.Tenants().Values.FirstOrDefault(t => t.Name == name || t.Id.ToString(CultureInfo.InvariantCulture) == name)?.Id : null);
                return tenant is { } id ? Results.Ok(cp.Quote(doc, id))
                    : Problems.Validation("tenant", "required", "an operator asks for a tenant: give tenant (name or id) of an existing tenant");
            }
            catch (ValidationException e)
            {
                return Problems.Validation(e);
            }
        }).AddEndpointFilter(opOrTenant).Produces<IReadOnlyList<QuoteRow>>().WithTags("market")
            .WithSummary("What a job (YAML, JSON or sbatch, not submitted) would cost on every node group that may run it, cheapest first");
        api.MapPost("/market/clear", async (ControlPlane cp) => Results.Ok(await cp.ClearSpotMarketAsync())).AddEndpointFilter(op)
            .Produces<IReadOnlyList<RoundRecord>>().WithTags("market").WithSummary("Run a round of the spot auction now (operator)");
        api.MapGet("/market/summary", MarketSummaryAsync).AddEndpointFilter(op).Produces<MarketSummary>().WithTags("market")
            .WithSummary("Operator view: traded volume and average prices by tier and unit, fees, subsidy spend, auction activity");

        // ---------------------------------------------------------------- wallets and the ledger
        api.MapGet("/wallets/{tenantId:long}", async (long tenantId, HttpContext h, ILedgerStore l, IControlStore s) =>
        {
            var who = Who(h);
            if ((!who.IsOperator && who.TenantId != tenantId) || await s.GetTenantAsync(tenantId) is null)
            {
                return Problems.NotFound($"tenant {tenantId}");
            }

            var a = await l.AccountAsync(Accounts.Tenant(tenantId));
            var vouchers = await l.VouchersAsync(tenantId, null);
            return Results.Ok(new WalletView(tenantId, Accounts.Tenant(tenantId), a?.Posted ?? 0, a?.PendingDebits ?? 0, a?.Available ?? 0, Money.Yuan(a?.Posted ?? 0),
                Money.Yuan(a?.Available ?? 0), vouchers));
        }).AddEndpointFilter(opOrTenant).Produces<WalletView>().WithTags("wallets").WithSummary("A tenant's wallet: balance, held in escrow, available, vouchers");
        api.MapPost("/wallets/{tenantId:long}/topups", (long tenantId, HttpContext h, IControlStore s, ILedgerStore l, ControlPlane cp, TimeProvider t) =>
            Move(h, s, l, cp, t, tenantId, topUp: true)).AddEndpointFilter(op).Produces<MoneyMoved>(201).WithTags("wallets")
            .WithSummary("Credit a tenant's wallet with money received (operator); Idempotency-Key makes a retry safe");
        api.MapPost("/providers/{providerId:long}/payouts", (long providerId, HttpContext h, IControlStore s, ILedgerStore l, ControlPlane cp, TimeProvider t) =>
            Move(h, s, l, cp, t, providerId, topUp: false)).AddEndpointFilter(op).Produces<MoneyMoved>(201).WithTags("wallets")
            .WithSummary("Record a payout of a provider's receivable (operator); Idempotency-Key makes a retry safe");
        api.MapGet("/ledger/accounts", async (ILedgerStore l, string? prefix) => Results.Ok(await l.AccountsAsync(prefix))).AddEndpointFilter(op)
            .Produces<IReadOnlyList<LedgerAccount>>().WithTags("ledger").WithSummary("Ledger accounts and balances (operator)");
        api.MapGet("/ledger/transfers", async (HttpContext h, ILedgerStore l, string? account, long? before, int? limit) =>
        {
            var who = Who(h);
            if (!who.IsOperator && account != Accounts.Tenant(who.TenantId ?? -1))
            {
                return Problems.Validation("account", "scope", $"a tenant key may list only its own wallet, account={Accounts.Tenant(who.TenantId ?? -1)}");
            }

            if (limit is < 1 or > 1000)
            {
                return Problems.Validation("limit", "range", "must be from 1 to 1000");
            }

            var page = await l.TransfersAsync(account, before ?? 0, limit ?? 100);
            return Results.Ok(new ListPage<LedgerTransfer>(page.Items, page.Next));
        }).AddEndpointFilter(opOrTenant).Produces<ListPage<LedgerTransfer>>().WithTags("ledger").WithSummary("The append-only journal, newest first (before = the previous page's next cursor), all or one account's");
        api.MapGet("/settlements", async (HttpContext h, ILedgerStore l, long? tenant, long? provider, long? job) =>
        {
            var who = Who(h);
            var q = new SettlementQuery(TenantId: who.Role == Roles.Tenant ? who.TenantId : tenant, ProviderId: who.Role == Roles.Provider ? who.ProviderId : provider, JobId: job);
            return Results.Ok(await l.SettlementsAsync(q));
        }).AddEndpointFilter(anyone).Produces<IReadOnlyList<SettlementRecord>>().WithTags("ledger")
            .WithSummary("The money side of each attempt: hold, metered time, cost and its split (a tenant or provider sees its own)");
        api.MapGet("/ledger/verify", async (ILedgerStore l, ControlPlane cp) => Results.Ok(await l.VerifyAsync(cp.Options.FeeBps))).AddEndpointFilter(op)
            .Produces<LedgerReport>().WithTags("ledger").WithSummary("Check every ledger invariant: balanced transfers, floors, zero sum, settlements against metered usage");

        // ---------------------------------------------------------------- vouchers
        api.MapPost("/voucher-programmes", CreateProgramme).AddEndpointFilter(op).Produces<ProgrammeRecord>(201).ProducesProblem(400).ProducesProblem(409)
            .WithTags("vouchers").WithSummary("Create a voucher programme (算力券): funder, budget, share of cost, per-tenant cap, sectors, validity");
        api.MapGet("/voucher-programmes", async (ILedgerStore l) =>
        {
            var list = new List<ProgrammeView>();
            foreach (var p in await l.ProgrammesAsync())
            {
                var vouchers = await l.VouchersAsync(null, p.Id);
                var subsidised = (await l.SettlementsAsync(new SettlementQuery(ProgrammeId: p.Id))).Sum(x => x.VoucherFen ?? 0);
                list.Add(new ProgrammeView(p, (await l.AccountAsync(Accounts.Programme(p.Id)))?.Available ?? 0, vouchers.Sum(v => v.AmountFen), subsidised));
            }

            return Results.Ok(list);
        }).AddEndpointFilter(op).Produces<IReadOnlyList<ProgrammeView>>().WithTags("vouchers").WithSummary("Programmes with remaining budget, issued and subsidised amounts");
        api.MapPost("/voucher-programmes/{id:long}/vouchers", IssueVoucher).AddEndpointFilter(op).Produces<VoucherRecord>(201).ProducesProblem(400).ProducesProblem(409)
            .WithTags("vouchers").WithSummary("Issue a voucher of a programme to a tenant (operator)");
        api.MapGet("/vouchers", async (HttpContext h, ILedgerStore l, long? tenant, long? programme) =>
        {
            var who = Who(h);
            return Results.Ok(await l.VouchersAsync(who.IsOperator ? tenant : who.TenantId, programme));
        }).AddEndpointFilter(opOrTenant).Produces<IReadOnlyList<VoucherRecord>>().WithTags("vouchers").WithSummary("Vouchers and their balances (a tenant sees its own)");
        api.MapGet("/voucher-programmes/{id:long}/writeoff", WriteOff).AddEndpointFilter(op).Produces<IReadOnlyList<WriteOffRow>>().WithTags("vouchers")
            .WithSummary("Write-off report (核销): every subsidised transaction with its metered evidence; format=csv for a spreadsheet");
        api.MapPost("/relations", async (HttpContext h, ILedgerStore l, TimeProvider t) =>
        {
            var (body, err) = await Problems.ReadObjectAsync(h.Request);
            if (err is not null)
            {
                return err;
            }

            var errors = new List<FieldError>();
            var tenant = Long(body!, "tenantId", errors, true);
            var provider = Long(body!, "providerId", errors, true);
            var note = body!["note"] is JsonValue nv && nv.TryGetValue<string>(out var n) && n.Length is > 0 and <= 256 ? n : null;
            if (note is null)
            {
                errors.Add(new FieldError("note", "required", "is required: 1 to 256 characters saying how they are related"));
            }

            OnlyFields(body!, ["tenantId", "providerId", "note"], errors);
            return errors.Count > 0 ? Problems.Validation(new ValidationException(errors))
                : Results.Created("/api/v1/relations", await l.AddRelationAsync(tenant!.Value, provider!.Value, note!, NowMs(t)));
        }).AddEndpointFilter(op).Produces<RelationRecord>(201).WithTags("vouchers")
            .WithSummary("Declare a tenant and a provider related parties (operator): no voucher applies between them");
        api.MapGet("/relations", async (ILedgerStore l) => Results.Ok(await l.RelationsAsync())).AddEndpointFilter(op)
            .Produces<IReadOnlyList<RelationRecord>>().WithTags("vouchers").WithSummary("Declared related parties");

        // ---------------------------------------------------------------- statements
        api.MapGet("/statements/tenants/{id:long}", async (long id, HttpContext h, IControlStore s, ILedgerStore l, ControlPlane cp, string? month, string? format) =>
        {
            var who = Who(h);
            if ((!who.IsOperator && who.TenantId != id) || await s.GetTenantAsync(id) is not { } tenant)
            {
                return Problems.NotFound($"tenant {id}");
            }

            if (Month(month, out var bad) is not { } range)
            {
                return bad!;
            }

            var st = await Statements.TenantAsync(l, tenant, range.From, range.To, month!, cp.ProviderNames());
            return Statements.Render(st, format, $"invoice-{tenant.Name}-{month}", st.Lines);
        }).AddEndpointFilter(opOrTenant).Produces<TenantStatement>().WithTags("statements")
            .WithSummary("A tenant's monthly invoice (JSON, or format=csv): every charged attempt, vouchers applied, top-ups, opening and closing balance");
        api.MapGet("/statements/providers/{id:long}", async (long id, HttpContext h, IControlStore s, ILedgerStore l, ControlPlane cp, string? month, string? format) =>
        {
            var who = Who(h);
            if ((!who.IsOperator && who.ProviderId != id) || await s.GetProviderAsync(id) is not { } provider)
            {
                return Problems.NotFound($"provider {id}");
            }

            if (Month(month, out var bad) is not { } range)
            {
                return bad!;
            }

            var st = await Statements.ProviderAsync(l, provider, range.From, range.To, month!, cp.Tenants());
            return Statements.Render(st, format, $"payout-{provider.Name}-{month}", st.Lines);
        }).AddEndpointFilter(opOrProvider).Produces<ProviderStatement>().WithTags("statements")
            .WithSummary("A provider's monthly payout statement (JSON, or format=csv): delivered attempts, platform fee, net, payouts");
    }

    private static async Task<IResult> AnswerContract(long id, bool accept, HttpContext h, ILedgerStore l, ControlPlane cp, TimeProvider t)
    {
        var who = Who(h);
        var o = await cp.AnswerContractAsync(id, who.IsOperator ? null : who.TenantId, accept);
        return Results.Ok(OfferView.Of(o, NowMs(t)));
        
    }

    private static async Task<IResult> CreateOffer(HttpContext h, IControlStore s, ILedgerStore l, ControlPlane cp, TimeProvider t)
    {
        var who = Who(h);
        var (body, err) = await Problems.ReadObjectAsync(h.Request);
        if (err is not null)
        {
            return err;
        }

        var errors = new List<FieldError>();
        var b = body!;
        OnlyFields(b, ["providerId", "group", "tier", "unit", "price", "nodes", "validFrom", "validTo", "tenantId"], errors);
        var providerId = who.IsOperator ? Long(b, "providerId", errors, true) : who.ProviderId;
        if (!who.IsOperator && b["providerId"] is not null && Long(b, "providerId", errors, false) != who.ProviderId)
        {
            errors.Add(new FieldError("providerId", "scope", "a provider key publishes offers for its own provider only"));
        }

        var group = b["group"] is JsonValue gv && gv.TryGetValue<string>(out var g) && g.Length is > 0 and <= 64 ? g : null;
        if (group is null)
        {
            errors.Add(new FieldError("group", "required", "is required: the id of one of the provider's registered node groups"));
        }

        var tier = b["tier"] is JsonValue tv && tv.TryGetValue<string>(out var ti) ? ti : null;
        if (tier is null || !Tiers.IsKnown(tier))
        {
            errors.Add(new FieldError("tier", "enum", $"is required: one of {string.Join(", ", Tiers.All)}"));
        }

        var unit = b["unit"] is JsonValue uv && uv.TryGetValue<string>(out var un) ? un : null;
        if (unit is null || !PriceUnits.IsKnown(unit))
        {
            errors.Add(new FieldError("unit", "enum", $"is required: one of {string.Join(", ", PriceUnits.All)}{(unit is null ? "" : $", not '{unit}'")}"));
        }
        else if (tier == Tiers.Interruptible && unit is not (PriceUnits.CardHour or PriceUnits.CoreHour))
        {
            errors.Add(new FieldError("unit", "auction", "interruptible capacity is auctioned in card-hour or core-hour lots"));
        }

        var price = Yuan(b, "price", errors, true);
        var nodes = Long(b, "nodes", errors, true, 1, 100_000);
        var from = Time(b, "validFrom", errors) ?? t.GetUtcNow();
        var to = Time(b, "validTo", errors) ?? from.AddDays(30);
        if (to <= from)
        {
            errors.Add(new FieldError("validTo", "order", "must be after validFrom"));
        }

        if (tier == Tiers.Reserved && b["validFrom"] is null)
        {
            errors.Add(new FieldError("validFrom", "required", "a reserved contract names when its window starts (its tenant accepts before then)"));
        }
        else if (tier == Tiers.Reserved && from <= t.GetUtcNow())
        {
            errors.Add(new FieldError("validFrom", "future", "a reserved contract's window must start in the future: the tenant accepts it before it binds"));
        }

        if (to - from > TimeSpan.FromDays(3660))
        {
            errors.Add(new FieldError("validTo", "range", "an offer's window is at most ten years"));
        }

        var tenantId = Long(b, "tenantId", errors, false);
        if (tier == Tiers.Reserved && tenantId is null)
        {
            errors.Add(new FieldError("tenantId", "required", "a reserved contract names the tenant it is for"));
        }
        else if (tier != Tiers.Reserved && tenantId is not null)
        {
            errors.Add(new FieldError("tenantId", "tier", "only a reserved contract is for one tenant"));
        }

        decimal? perNode = null;
        if (providerId is { } pid && group is not null && unit is not null && PriceUnits.IsKnown(unit) && await s.GetProviderAsync(pid) is { } prov
            && prov.Groups.FirstOrDefault(x => x.Id == group) is { } go)
        {
            perNode = PriceUnits.PerNode(unit, new Core.Domain.NodeShape(go.MilliCpu, go.MemoryMiB, go.Accelerator, go.Accelerators), cp.Catalogue);
            if (perNode is null)
            {
                errors.Add(new FieldError("unit", "hardware", $"group {group} ({go.Accelerators} × {go.Accelerator ?? "no accelerator"}) has no {unit} to sell"));
            }
        }

        if (tenantId is { } tid && await s.GetTenantAsync(tid) is null)
        {
            errors.Add(new FieldError("tenantId", "exists", $"tenant {tid} does not exist"));
        }

        // A reserved contract is take-or-pay: its value (price × the nodes' units × the window), in checked arithmetic.
        long? contract = null;
        if (errors.Count == 0 && tier == Tiers.Reserved && perNode is { } units)
        {
            try
            {
                contract = Charging.Cost(price!.Value, Money.Round(units * nodes!.Value * 1000m), (to - from).Ticks / TimeSpan.TicksPerMillisecond);
            }
            catch (OverflowException)
            {
                errors.Add(new FieldError("price", "range", "price × nodes × window is larger than any amount the ledger can hold"));
            }
        }

        if (errors.Count > 0)
        {
            return Problems.Validation(new ValidationException(errors));
        }

        var o = await cp.CreateOfferAsync(new OfferRecord(0, providerId!.Value, group!, tier!, unit!, price!.Value, (int)nodes!.Value, from.ToUnixTimeMilliseconds(),
            to.ToUnixTimeMilliseconds(), tenantId, NowMs(t), null) { ContractFen = contract });
        return Results.Created($"/api/v1/offers/{o.Id}", OfferView.Of(o, NowMs(t)));
        
    }

    private static async Task<IResult> Move(HttpContext h, IControlStore s, ILedgerStore l, ControlPlane cp, TimeProvider t, long id, bool topUp)
    {
        var idem = IdemKey(h, out var bad);
        if (bad is not null)
        {
            return bad;
        }

        if (topUp ? await s.GetTenantAsync(id) is null : await s.GetProviderAsync(id) is null)
        {
            return Problems.NotFound($"{(topUp ? "tenant" : "provider")} {id}");
        }

        var (body, err) = await Problems.ReadObjectAsync(h.Request);
        if (err is not null)
        {
            return err;
        }

        var errors = new List<FieldError>();
        var amount = Yuan(body!, "amount", errors, true, 1);
        var reference = body!["reference"] is JsonValue rv && rv.TryGetValue<string>(out var r) && r.Length <= 128 ? r : null;
        if (body["reference"] is not null && reference is null)
        {
            errors.Add(new FieldError("reference", "length", "must be a string of at most 128 characters (a bank reference)"));
        }

        OnlyFields(body, ["amount", "reference"], errors);
        if (errors.Count > 0)
        {
            return Problems.Validation(new ValidationException(errors));
        }

        var account = topUp ? Accounts.Tenant(id) : Accounts.Provider(id);
        var transferId = $"{(topUp ? "topup" : "payout")}:{id}:{idem ?? Guid.NewGuid().ToString("N")}";
        var req = topUp
            ? new TransferRequest(transferId, TransferKinds.Posted, Accounts.Cash, account, amount!.Value, "topup") { Memo = reference }
            : new TransferRequest(transferId, TransferKinds.Posted, account, Accounts.Cash, amount!.Value, "payout") { Memo = reference };
        var o = await cp.MoveMoneyAsync(req, topUp ? id : null, topUp);
        if (!o.Ok)
        {
            return Problems.Of(409, o.Result, o.Message ?? o.Result);
        }

        var balance = (await l.AccountAsync(account))?.Posted ?? 0;
        var view = new MoneyMoved(o.Id, o.Result, o.Amount, balance);
        return o.Result == "exists" ? Results.Ok(view) : Results.Created($"/api/v1/ledger/transfers?account={account}", view);
    }

    private static async Task<IResult> CreateProgramme(HttpContext h, ILedgerStore l, TimeProvider t)
    {
        var (body, err) = await Problems.ReadObjectAsync(h.Request);
        if (err is not null)
        {
            return err;
        }

        var errors = new List<FieldError>();
        var b = body!;
        OnlyFields(b, ["name", "funder", "budget", "share", "domesticShare", "tenantCap", "sectors", "validFrom", "validTo"], errors);
        var name = Label(b, "name", 64, null, errors);
        var funder = Label(b, "funder", 64, null, errors);
        var budget = Yuan(b, "budget", errors, true, 1);
        var share = Share(b, "share", errors, true);
        var domestic = Share(b, "domesticShare", errors, false);
        var cap = Yuan(b, "tenantCap", errors, true, 1);
        var sectors = new List<string>();
        if (b["sectors"] is { } sn)
        {
            if (sn is JsonArray arr && arr.All(x => x is JsonValue v && v.TryGetValue<string>(out var sv) && sv.Length is > 0 and <= 64))
            {
                sectors = [.. arr.Select(x => x!.GetValue<string>())];
            }
            else
            {
                errors.Add(new FieldError("sectors", "type", "must be a list of sector names (empty = every sector)"));
            }
        }

        var from = Time(b, "validFrom", errors) ?? t.GetUtcNow();
        var to = Time(b, "validTo", errors);
        if (to is null)
        {
            errors.Add(new FieldError("validTo", "required", "is required: when the programme ends (ISO 8601)"));
        }
        else if (to <= from)
        {
            errors.Add(new FieldError("validTo", "order", "must be after validFrom"));
        }

        if (share is { } sh && domestic is { } d && d < sh)
        {
            errors.Add(new FieldError("domesticShare", "range", "must be at least share (it is the higher share for domestic accelerators)"));
        }

        if (cap is { } c && budget is { } bu && c > bu)
        {
            errors.Add(new FieldError("tenantCap", "range", "must not exceed budget"));
        }

        if (errors.Count > 0)
        {
            return Problems.Validation(new ValidationException(errors));
        }

        return Results.Created("/api/v1/voucher-programmes", await l.CreateProgrammeAsync(new ProgrammeRecord(0, name!, funder!, budget!.Value,
            share!.Value, domestic, cap!.Value, sectors, from.ToUnixTimeMilliseconds(), to!.Value.ToUnixTimeMilliseconds(), NowMs(t))));
    }

    private static async Task<IResult> IssueVoucher(long id, HttpContext h, ILedgerStore l, ControlPlane cp, TimeProvider t)
    {
        var (body, err) = await Problems.ReadObjectAsync(h.Request);
        if (err is not null)
        {
            return err;
        }

        var errors = new List<FieldError>();
        OnlyFields(body!, ["tenantId", "amount", "validTo"], errors);
        var tenant = Long(body!, "tenantId", errors, true);
        var amount = Yuan(body!, "amount", errors, true, 1);
        var until = Time(body!, "validTo", errors);
        if (errors.Count > 0)
        {
            return Problems.Validation(new ValidationException(errors));
        }

        var programme = (await l.ProgrammesAsync()).FirstOrDefault(p => p.Id == id);
        if (programme is null)
        {
            return Problems.NotFound($"programme {id}");
        }

        var v = await cp.IssueVoucherAsync(id, tenant!.Value, amount!.Value, until?.ToUnixTimeMilliseconds() ?? programme.ValidToMs);
        return Results.Created($"/api/v1/vouchers?tenant={tenant}", v);
        
    }

    private static async Task<IResult> WriteOff(long id, ILedgerStore l, IControlStore s, ControlPlane cp, string? format)
    {
        if ((await l.ProgrammesAsync()).FirstOrDefault(p => p.Id == id) is not { } programme)
        {
            return Problems.NotFound($"programme {id}");
        }

        var rows = new List<WriteOffRow>();
        foreach (var x in (await l.SettlementsAsync(new SettlementQuery(ProgrammeId: id))).Where(x => x.State == SettlementStates.Settled && x.VoucherFen > 0))
        {
            var u = (await s.JobUsageAsync(x.JobId)).FirstOrDefault(u => u.Attempt == x.Attempt);
            if (u is null)
            {
                continue;
            }

            var q = cp.Standard(u);
            rows.Add(new WriteOffRow(x.JobId, x.Attempt, x.TenantId, x.ProviderId, x.VoucherId!.Value, x.Tier, x.Unit, x.PriceFen, x.UnitsMilli,
                DateTimeOffset.FromUnixTimeMilliseconds(u.StartedMs), DateTimeOffset.FromUnixTimeMilliseconds(u.EndedMs), x.MeteredMs ?? 0, u.Model, u.Cards,
                q.CoreHours, q.CardHours, q.Fp16TflopsHours, x.CostFen ?? 0, x.VoucherFen ?? 0, x.TenantFen ?? 0, $"vpay:{x.JobId}:{x.Attempt}"));
        }

        return Statements.Render(rows, format, $"writeoff-{programme.Name}", rows);
    }

    private static async Task<IResult> MarketSummaryAsync(ILedgerStore l, DateTimeOffset? from, DateTimeOffset? to)
    {
        var f = from ?? DateTimeOffset.UnixEpoch;
        var until = to ?? DateTimeOffset.MaxValue;
        var settled = (await l.SettlementsAsync(new SettlementQuery(FromMs: f.ToUnixTimeMilliseconds(), ToMs: until.ToUnixTimeMilliseconds())))
            .Where(x => x.State == SettlementStates.Settled).ToList();
        var volume = settled.GroupBy(x => (x.Tier, x.Unit)).OrderBy(g => g.Key.Tier, StringComparer.Ordinal).ThenBy(g => g.Key.Unit, StringComparer.Ordinal).Select(g =>
        {
            var units = g.Sum(x => x.UnitsMilli / 1000m * (x.MeteredMs ?? 0) / 3_600_000m);
            var cost = g.Sum(x => x.CostFen ?? 0);
            return new SummaryRow(g.Key.Tier, g.Key.Unit, g.Count(), decimal.Round(units, 6), cost, units > 0 ? Money.Round(cost / units) : null);
        }).ToList();
        var vouchers = (await l.VouchersAsync(null, null)).ToDictionary(v => v.Id, v => v.ProgrammeId);
        var names = (await l.ProgrammesAsync()).ToDictionary(p => p.Id, p => p.Name);
        var byProgramme = settled.Where(x => x.VoucherId is not null && x.VoucherFen > 0)
            .GroupBy(x => names.GetValueOrDefault(vouchers.GetValueOrDefault(x.VoucherId!.Value), "?"))
            .ToDictionary(g => g.Key, g => g.Sum(x => x.VoucherFen ?? 0));
        var rounds = (await l.RoundsAsync(null, 100_000)).Where(r => r.AtMs >= f.ToUnixTimeMilliseconds() && r.AtMs < until.ToUnixTimeMilliseconds()).ToList();
        var open = (await l.SettlementsAsync(new SettlementQuery())).Where(x => x.State == SettlementStates.Held).ToList();
        var contracts = (await l.OffersAsync()).Where(o => o.ContractState is not null && o.CreatedMs < until.ToUnixTimeMilliseconds() && o.ValidToMs >= f.ToUnixTimeMilliseconds()).ToList();
        return Results.Ok(new MarketSummary(f, until, volume, settled.Sum(x => x.CostFen ?? 0), settled.Sum(x => x.FeeFen ?? 0), settled.Sum(x => x.VoucherFen ?? 0),
            byProgramme, rounds.Count, rounds.Sum(r => r.Volume), open.Count, open.Sum(x => x.HoldFen), contracts.Count, contracts.Sum(o => o.ContractChargedFen ?? 0),
            contracts.Where(o => o.ContractState == "held").Sum(o => o.ContractFen ?? 0)));
    }
}
