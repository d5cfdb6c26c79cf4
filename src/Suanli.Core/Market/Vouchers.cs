namespace Suanli.Core.Market;

/// <summary>One live voucher of a tenant with its programme's terms: what the voucher rules look at.</summary>
/// <param name="VoucherId">The voucher (its balance is the ledger account voucher:{id}).</param>
/// <param name="ValidToMs">When the voucher ends.</param>
/// <param name="Expired">True once its expiry returned the rest to the programme.</param>
/// <param name="AvailableFen">What the voucher's account still holds above what is held from it.</param>
/// <param name="ShareBps">The share of a job's cost the programme covers, in basis points.</param>
/// <param name="DomesticShareBps">The share for jobs on domestic accelerators (null: the plain share).</param>
/// <param name="Sectors">The sectors the programme covers (empty: every sector).</param>
/// <param name="ProgrammeFromMs">Start of the programme's window.</param>
/// <param name="ProgrammeToMs">End of the programme's window.</param>
public sealed record VoucherTerms(long VoucherId, long ValidToMs, bool Expired, long AvailableFen, int ShareBps, int? DomesticShareBps,
    IReadOnlyList<string> Sectors, long ProgrammeFromMs, long ProgrammeToMs);

/// <summary>
/// The rules of government compute vouchers (算力券), pure: which voucher pays towards an attempt, how much of it, and
/// whether a programme may issue one. The store applies the transfers these rules decide; it has no rules of its own.
/// </summary>
public static class VoucherRules
{
    /// <summary>True when a programme covering <paramref name="sectors"/> covers a tenant of <paramref name="sector"/>.</summary>
    public static bool Covers(IReadOnlyList<string> sectors, string sector) => sectors.Count == 0 || sectors.Contains(sector, StringComparer.Ordinal);

    /// <summary>True when the voucher may pay towards an attempt starting at <paramref name="nowMs"/>.</summary>
    public static bool Eligible(VoucherTerms v, string sector, long nowMs) =>
        !v.Expired && v.ValidToMs > nowMs && v.ProgrammeFromMs <= nowMs && v.ProgrammeToMs > nowMs && v.AvailableFen > 0 && Covers(v.Sectors, sector);

    /// <summary>
    /// The voucher that pays towards one attempt: the tenant's soonest-expiring eligible voucher (ties: the lower id),
    /// none when the tenant and the provider are related parties (no subsidy between them). One voucher per attempt:
    /// no double subsidy.
    /// </summary>
    public static VoucherTerms? Choose(IEnumerable<VoucherTerms> tenantVouchers, string sector, bool relatedParty, long nowMs)
    {
        ArgumentNullException.ThrowIfNull(tenantVouchers);
        if (relatedParty)
        {
            return null;
        }

        VoucherTerms? best = null;
        foreach (var v in tenantVouchers)
        {
            if (Eligible(v, sector, nowMs) && (best is null || v.ValidToMs < best.ValidToMs || (v.ValidToMs == best.ValidToMs && v.VoucherId < best.VoucherId)))
            {
                best = v;
            }
        }

        return best;
    }

    /// <summary>The share of the cost the voucher covers for a job on domestic (or other) accelerators, in basis points.</summary>
    public static int ShareBps(VoucherTerms v, bool domestic) => domestic && v.DomesticShareBps is { } d ? d : v.ShareBps;

    /// <summary>
    /// Why a programme may not issue a voucher (code and message naming the field), or null when it may: the programme
    /// still runs, the voucher ends within it and in the future, the tenant's sector is covered, and the per-tenant cap
    /// holds (<paramref name="issuedFen"/>: what the tenant was issued by this programme already). The budget is the
    /// ledger's to check: the issuing transfer fails when the programme's account cannot fund it.
    /// </summary>
    public static (string Code, string Message)? IssueRefusal(string programme, IReadOnlyList<string> sectors, long programmeToMs, long tenantCapFen,
        string tenant, string sector, long issuedFen, long amountFen, long validToMs, long nowMs)
    {
        ArgumentNullException.ThrowIfNull(sectors);
        if (nowMs >= programmeToMs)
        {
            return ("expired", $"programme: '{programme}' ended at {DateTimeOffset.FromUnixTimeMilliseconds(programmeToMs):u}; it issues no more vouchers");
        }

        if (validToMs <= nowMs || validToMs > programmeToMs)
        {
            return ("invalid", $"validTo: must be in the future and no later than the programme's end ({DateTimeOffset.FromUnixTimeMilliseconds(programmeToMs):u})");
        }

        if (!Covers(sectors, sector))
        {
            return ("not_eligible", $"tenantId: tenant {tenant} is in sector '{sector}'; programme '{programme}' covers {string.Join(", ", sectors)}");
        }

        if (amountFen > tenantCapFen - issuedFen)
        {
            return ("cap_exceeded", $"amount: tenant {tenant} holds {Money.Yuan(issuedFen)} of programme '{programme}', whose per-tenant cap is {Money.Yuan(tenantCapFen)}; at most {Money.Yuan(Math.Max(0, tenantCapFen - issuedFen))} more");
        }

        return null;
    }
}

/// <summary>The consent states of a reserved contract.</summary>
public static class Consents
{
    public const string Proposed = "proposed";
    public const string Accepted = "accepted";
    public const string Declined = "declined";
}

/// <summary>Reserved contracts (take-or-pay) and the capacity offers may sell, pure.</summary>
public static class Contracts
{
    /// <summary>
    /// Take-or-pay rule: the whole value when the window ran to its end; when the contract was withdrawn early (the
    /// provider ended it), the share of the window that had passed, rounded half up.
    /// </summary>
    public static long Charge(long valueFen, long fromMs, long toMs, long? withdrawnMs)
    {
        if (withdrawnMs is not { } w || w >= toMs)
        {
            return valueFen;
        }

        var used = Math.Clamp(w - fromMs, 0, toMs - fromMs);
        return Money.Round((decimal)valueFen * used / (toMs - fromMs));
    }

    /// <summary>
    /// Why a new offer of <paramref name="nodes"/> nodes would oversell a group of <paramref name="groupNodes"/> (code and
    /// message), or null when it fits: offers whose windows overlap never sell more nodes than the group has.
    /// <paramref name="overlappingNodes"/> is what the live offers overlapping the new one's window sell already.
    /// </summary>
    public static (string Code, string Message)? OverCapacity(string group, int groupNodes, long overlappingNodes, int nodes) =>
        overlappingNodes + nodes > groupNodes
            ? ("over_capacity", $"nodes: group {group} has {groupNodes} nodes and offers overlapping this window already sell {overlappingNodes}; at most {Math.Max(0, groupNodes - overlappingNodes)} more")
            : null;

    /// <summary>
    /// Why a tenant's answer to a proposed contract is refused (code and message), or null when it stands: only a
    /// standing proposal can be answered, and one whose window has begun can no longer be accepted (no back-dating).
    /// </summary>
    public static (string Code, string Message)? AnswerRefusal(long id, string? consent, bool withdrawn, bool accept, long validFromMs, long nowMs)
    {
        if (consent != Consents.Proposed || withdrawn)
        {
            return ("already_answered", $"contract {id} is {(withdrawn && consent == Consents.Proposed ? "withdrawn" : consent)}; only a standing proposal can be answered");
        }

        return accept && nowMs >= validFromMs
            ? ("window_started", $"contract {id}: its window began at {DateTimeOffset.FromUnixTimeMilliseconds(validFromMs):u}; it can no longer be accepted (ask the provider for a new proposal)")
            : null;
    }
}
