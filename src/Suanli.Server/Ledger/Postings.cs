using Suanli.Core.Market;
using Suanli.Server.Storage;

namespace Suanli.Server.Ledger;

/// <summary>
/// Which transfers each money event makes, pure: the ids (which make them idempotent), accounts, amounts and codes.
/// A store adapter applies these in one transaction and writes the rows beside them; it decides nothing itself, so a
/// second database applies exactly the same money.
/// </summary>
public static class Postings
{
    /// <summary>The key of one attempt's money: "{job}:{attempt}".</summary>
    public static string Key(long jobId, int attempt) => $"{jobId}:{attempt}";

    /// <summary>
    /// The voucher's part of a freshly leased attempt's hold: its share of the hold, balancing (lowered to what the
    /// voucher still has). The tenant's hold is the rest (<see cref="TenantHold"/>).
    /// </summary>
    public static TransferRequest VoucherHold(JobRecord job, long voucherId, HoldPlan hold, int shareBps) =>
        new($"vhold:{Key(job.Id, job.Attempt)}", TransferKinds.Pending, Accounts.Voucher(voucherId), Accounts.Escrow, Money.Share(hold.HoldFen, shareBps), "voucher-hold")
        {
            JobId = job.Id, Attempt = job.Attempt, Balancing = true,
        };

    /// <summary>The tenant's part of the hold: the whole estimate less what the voucher holds.</summary>
    public static TransferRequest TenantHold(JobRecord job, HoldPlan hold, long voucherHeldFen) =>
        new($"hold:{Key(job.Id, job.Attempt)}", TransferKinds.Pending, Accounts.Tenant(job.TenantId), Accounts.Escrow, hold.HoldFen - voucherHeldFen, "hold")
        {
            JobId = job.Id, Attempt = job.Attempt, Memo = $"{hold.Tier} {hold.Unit} at {Money.Yuan(hold.PriceFen)}",
        };

    /// <summary>The split of a held attempt's cost for <paramref name="meteredMs"/> of use (buyer and seller prices, voucher, fee).</summary>
    public static SettlementSplit Split(SettlementRecord s, long meteredMs, int feeBps) =>
        Settlement.Split(Charging.Cost(s.PriceFen, s.UnitsMilli, meteredMs), Charging.Cost(s.SellerPriceFen, s.UnitsMilli, meteredMs), s.HoldFen, s.VoucherHoldFen,
            s.VoucherShareBps, feeBps);

    /// <summary>
    /// How a held attempt ends: voided (both holds released, nothing charged) or charged for its metered time (the
    /// tenant's and the voucher's holds posted up to their shares, the provider paid its seller price, the platform its
    /// fee). The split is null for a void.
    /// </summary>
    public static (IReadOnlyList<TransferRequest> Transfers, SettlementSplit? Split) Settle(SettlementRecord s, SettlePlan plan, int feeBps)
    {
        ArgumentNullException.ThrowIfNull(s);
        ArgumentNullException.ThrowIfNull(plan);
        var key = Key(s.JobId, plan.Attempt);
        var transfers = new List<TransferRequest>(4);
        if (plan.Void)
        {
            transfers.Add(new TransferRequest($"void:{key}", TransferKinds.Void, "", "", 0, "void") { PendingId = $"hold:{key}", JobId = s.JobId, Attempt = plan.Attempt, Memo = plan.Note });
            if (s.VoucherId is not null)
            {
                transfers.Add(new TransferRequest($"vvoid:{key}", TransferKinds.Void, "", "", 0, "voucher-void") { PendingId = $"vhold:{key}", JobId = s.JobId, Attempt = plan.Attempt });
            }

            return (transfers, null);
        }

        var split = Split(s, plan.MeteredMs, feeBps);
        transfers.Add(new TransferRequest($"pay:{key}", TransferKinds.Post, "", "", split.Tenant, "charge") { PendingId = $"hold:{key}", JobId = s.JobId, Attempt = plan.Attempt });
        if (s.VoucherId is not null)
        {
            transfers.Add(new TransferRequest($"vpay:{key}", TransferKinds.Post, "", "", split.Voucher, "voucher-charge") { PendingId = $"vhold:{key}", JobId = s.JobId, Attempt = plan.Attempt });
        }

        transfers.Add(new TransferRequest($"payout:{key}", TransferKinds.Posted, Accounts.Escrow, Accounts.Provider(s.ProviderId), split.Provider, "provider-share") { JobId = s.JobId, Attempt = plan.Attempt });
        transfers.Add(new TransferRequest($"fee:{key}", TransferKinds.Posted, Accounts.Escrow, Accounts.Fee, split.Fee, "platform-fee") { JobId = s.JobId, Attempt = plan.Attempt });
        return (transfers, split);
    }

    /// <summary>Accepting a reserved contract escrows its whole value from the tenant's wallet (take-or-pay).</summary>
    public static TransferRequest ContractHold(OfferRecord o, string providerName) =>
        new($"contract:{o.Id}", TransferKinds.Pending, Accounts.Tenant(o.TenantId!.Value), Accounts.Escrow, o.ContractFen ?? 0, "contract-hold")
        {
            Memo = $"reserved contract {o.Id}: {o.Nodes} nodes of {providerName}/{o.GroupId} at {Money.Yuan(o.PriceFen)}/{o.Unit}",
        };

    /// <summary>
    /// Settling a contract whose window ended (or that was withdrawn): the take-or-pay charge is posted from the hold,
    /// the provider paid it less the fee.
    /// </summary>
    public static (IReadOnlyList<TransferRequest> Transfers, long ChargedFen, long FeeFen) ContractSettlement(OfferRecord o, int feeBps)
    {
        ArgumentNullException.ThrowIfNull(o);
        var charged = o.ContractCharge();
        var fee = Money.Share(charged, feeBps);
        return ([
            new TransferRequest($"contract-pay:{o.Id}", TransferKinds.Post, "", "", charged, "contract-charge") { PendingId = $"contract:{o.Id}" },
            new TransferRequest($"contract-payout:{o.Id}", TransferKinds.Posted, Accounts.Escrow, Accounts.Provider(o.ProviderId), charged - fee, "contract-provider-share"),
            new TransferRequest($"contract-fee:{o.Id}", TransferKinds.Posted, Accounts.Escrow, Accounts.Fee, fee, "platform-fee"),
        ], charged, fee);
    }

    /// <summary>A programme's budget moves from its funder to the programme's account when it is created.</summary>
    public static TransferRequest ProgrammeBudget(ProgrammeRecord p) =>
        new($"fund:programme:{p.Id}", TransferKinds.Posted, Accounts.Funder(p.Funder), Accounts.Programme(p.Id), p.BudgetFen, "programme-budget")
        {
            Memo = $"budget of programme {p.Name}",
        };

    /// <summary>Issuing a voucher moves its amount from the programme's budget to the voucher.</summary>
    public static TransferRequest VoucherIssue(long voucherId, long programmeId, string tenantName, long amountFen) =>
        new($"issue:voucher:{voucherId}", TransferKinds.Posted, Accounts.Programme(programmeId), Accounts.Voucher(voucherId), amountFen, "voucher-issue")
        {
            Memo = $"voucher {voucherId} for tenant {tenantName}",
        };

    /// <summary>At expiry what a voucher has left returns to its programme (none when it has nothing left).</summary>
    public static TransferRequest? VoucherExpiry(VoucherRecord v, long nowMs) =>
        v.AvailableFen <= 0 ? null
            : new TransferRequest($"expire:voucher:{v.Id}:{nowMs}", TransferKinds.Posted, Accounts.Voucher(v.Id), Accounts.Programme(v.ProgrammeId), v.AvailableFen, "voucher-expire")
            {
                Memo = "unused balance returned to the programme at expiry",
            };
}
