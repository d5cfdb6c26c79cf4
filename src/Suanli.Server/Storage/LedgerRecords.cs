using Suanli.Core.Market;

namespace Suanli.Server.Storage;

/// <summary>Transfer kinds: posted (moves money now), pending (a hold), post (completes a hold, up to its amount), void (releases a hold).</summary>
public static class TransferKinds
{
    public const string Posted = "posted";
    public const string Pending = "pending";
    public const string Post = "post";
    public const string Void = "void";

    public static bool IsKnown(string kind) => kind is Posted or Pending or Post or Void;
}

/// <summary>
/// Ledger accounts are named by what they belong to; the name fixes the kind and the floor (the lowest balance the
/// account may reach; null = none, for accounts that stand for money outside the platform).
/// </summary>
public static class Accounts
{
    public const string Cash = "platform:cash";
    public const string Escrow = "platform:escrow";
    public const string Fee = "platform:fee";

    public static string Tenant(long id) => $"tenant:{id}";

    public static string Provider(long id) => $"provider:{id}";

    public static string Programme(long id) => $"programme:{id}";

    public static string Voucher(long id) => $"voucher:{id}";

    public static string Funder(string name) => $"funder:{name}";

    /// <summary>Kind and floor of an account name; null when the name follows no known pattern.</summary>
    public static (string Kind, long? Floor)? Describe(string id)
    {
        if (id is Cash)
        {
            return ("cash", null);
        }

        if (id is Escrow or Fee)
        {
            return (id[9..], 0);
        }

        var colon = id.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0 || colon == id.Length - 1)
        {
            return null;
        }

        var (kind, rest) = (id[..colon], id[(colon + 1)..]);
        var numeric = long.TryParse(rest, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out _);
        return kind switch
        {
            "tenant" when numeric => ("wallet", 0),
            "provider" when numeric => ("receivable", 0),
            "programme" when numeric => ("programme", 0),
            "voucher" when numeric => ("voucher", 0),
            "funder" when rest.Length <= 64 => ("funder", null),
            _ => null,
        };
    }
}

/// <summary>
/// One transfer to apply. Its <see cref="Id"/> makes it idempotent: applying the same id again with the same fields
/// answers "exists" and changes nothing; with different fields it is refused. For post and void, debit and credit come
/// from the pending transfer. <see cref="Balancing"/> (pending and posted only) lowers the amount to what the debit
/// account has above its floor, instead of failing.
/// </summary>
public sealed record TransferRequest(string Id, string Kind, string Debit, string Credit, long Amount, string Code)
{
    public string? PendingId { get; init; }

    public long? JobId { get; init; }

    public int? Attempt { get; init; }

    public string? Memo { get; init; }

    public bool Balancing { get; init; }
}

/// <summary>What became of one transfer: "created", "exists", or an error code with its message.</summary>
public sealed record TransferOutcome(string Id, string Result, long Amount, string? Message = null)
{
    public bool Ok => Result is "created" or "exists";
}

/// <summary>An account and its balances: posted = credits − debits; pending holds are not yet posted.</summary>
public sealed record LedgerAccount(string Id, string Kind, long? Floor, long Posted, long PendingDebits, long PendingCredits, long CreatedMs)
{
    /// <summary>What can still be debited: posted less held.</summary>
    public long Available => Posted - PendingDebits;
}

/// <summary>One journal entry (append-only).</summary>
public sealed record LedgerTransfer(long Seq, string Id, string Kind, string Debit, string Credit, long Amount, string? PendingId, string Code,
    long? JobId, int? Attempt, string? Memo, long AtMs);

/// <summary>The result of <c>suanli ledger verify</c>: every invariant checked, with what broke.</summary>
public sealed record LedgerReport(bool Ok, int Accounts, long Transfers, long SumPosted, long SumPendingDebits, long SumPendingCredits,
    int OpenHolds, long OpenHoldFen, int SettlementsChecked, long SettledFen, IReadOnlyList<string> Problems);

/// <summary>A provider's offer: one tier of one node group, at a price in a standard unit, for a number of nodes, in a window.</summary>
public sealed record OfferRecord(long Id, long ProviderId, string GroupId, string Tier, string Unit, long PriceFen, int Nodes, long ValidFromMs, long ValidToMs,
    long? TenantId, long CreatedMs, long? WithdrawnMs)
{
    /// <summary>True when the offer sells at <paramref name="nowMs"/>.</summary>
    public bool LiveAt(long nowMs) => WithdrawnMs is null && ValidFromMs <= nowMs && nowMs < ValidToMs && (Tier != Suanli.Core.Market.Tiers.Reserved || Consent == Consents.Accepted);

    /// <summary>A reserved contract's consent: proposed by the provider, accepted or declined by the tenant; null for other tiers.</summary>
    public string? Consent { get; init; }

    /// <summary>When the tenant (or the operator for it) accepted the contract.</summary>
    public long? AcceptedMs { get; init; }

    /// <summary>When the contract's charge was posted (the statements of that month list it).</summary>
    public long? ContractSettledMs { get; init; }

    /// <summary>A reserved contract's value (take-or-pay: price × the nodes' units × the window), held in escrow from its creation.</summary>
    public long? ContractFen { get; init; }

    /// <summary>held (escrowed) or settled (paid to the provider at the window's end, pro rata when withdrawn early); null when no contract.</summary>
    public string? ContractState { get; init; }

    /// <summary>What the tenant was charged when the contract settled.</summary>
    public long? ContractChargedFen { get; init; }

    /// <summary>The platform's fee out of the charge.</summary>
    public long? ContractFeeFen { get; init; }

    /// <summary>The take-or-pay charge of this contract as it stands (<see cref="Contracts.Charge"/>).</summary>
    public long ContractCharge() => Contracts.Charge(ContractFen ?? 0, ValidFromMs, ValidToMs, WithdrawnMs);
}

/// <summary>What the lease of a priced job holds in escrow (written with the lease, in one transaction).</summary>
public sealed record HoldPlan(long OfferId, string Tier, string Unit, long PriceFen, long SellerPriceFen, long UnitsMilli, long HoldFen, bool Domestic);

/// <summary>How an attempt's hold ends: charged for the metered time, or voided (the provider was at fault).</summary>
public sealed record SettlePlan(int Attempt, bool Void, long MeteredMs, string Note);

/// <summary>The money side of one attempt of a job.</summary>
public sealed record SettlementRecord(long JobId, int Attempt, long TenantId, long ProviderId, string GroupId, long OfferId, string Tier, string Unit,
    long PriceFen, long SellerPriceFen, long UnitsMilli, long HoldFen, long? VoucherId, long VoucherHoldFen, int VoucherShareBps, string State,
    long? MeteredMs, long? CostFen, long? TenantFen, long? VoucherFen, long? ProviderFen, long? FeeFen, long HeldMs, long? SettledMs, string? Note);

/// <summary>Settlement states.</summary>
public static class SettlementStates
{
    public const string Held = "held";
    public const string Settled = "settled";
    public const string Voided = "voided";
}

/// <summary>A voucher programme (算力券): who funds it, its budget, the share of cost it covers and its rules.</summary>
public sealed record ProgrammeRecord(long Id, string Name, string Funder, long BudgetFen, int ShareBps, int? DomesticShareBps, long TenantCapFen,
    IReadOnlyList<string> Sectors, long ValidFromMs, long ValidToMs, long CreatedMs);

/// <summary>A voucher issued to a tenant; its balance is the ledger account voucher:{id}.</summary>
public sealed record VoucherRecord(long Id, long ProgrammeId, long TenantId, long AmountFen, long ValidToMs, long CreatedMs, long? ExpiredMs, long AvailableFen);

/// <summary>A declared relation between a tenant organisation and a provider organisation (no voucher between them).</summary>
public sealed record RelationRecord(long TenantId, long ProviderId, string Note, long CreatedMs);

/// <summary>One clearing of the spot market for one instrument.</summary>
public sealed record RoundRecord(long Id, string Instrument, long AtMs, int Bids, int Asks, long BidLots, long AskLots, long Volume, long EfficientVolume,
    long BuyerPriceFen, long SellerPriceFen, bool Reduced);

/// <summary>Filter of a settlement listing.</summary>
public sealed record SettlementQuery(long? TenantId = null, long? ProviderId = null, long? ProgrammeId = null, long FromMs = 0, long ToMs = long.MaxValue, long? JobId = null);

/// <summary>
/// The trading centre's storage port (SQLite today; operation-shaped like <see cref="IControlStore"/>). Every method is
/// one transaction; money moves only through transfers in the append-only journal.
/// </summary>
public interface ILedgerStore
{
    /// <summary>
    /// Applies transfers. Linked: all or none (the first failure throws <see cref="StoreConflictException"/> naming it).
    /// Unlinked: each on its own, with an outcome each.
    /// </summary>
    Task<IReadOnlyList<TransferOutcome>> TransferAsync(IReadOnlyList<TransferRequest> transfers, bool linked, long nowMs, CancellationToken ct = default);

    Task<LedgerAccount?> AccountAsync(string id, CancellationToken ct = default);

    Task<IReadOnlyList<LedgerAccount>> AccountsAsync(string? prefix, CancellationToken ct = default);

    /// <summary>
    /// What each tenant can put in escrow now, in fen: its wallet's available balance above its floor plus what its
    /// live vouchers still hold (an upper bound: a voucher covers only its programme's share of an eligible job). A
    /// tenant without an account or voucher is absent (nothing to spend); one whose wallet has no floor maps to
    /// <see cref="long.MaxValue"/>.
    /// </summary>
    Task<IReadOnlyDictionary<long, long>> SpendableAsync(long nowMs, CancellationToken ct = default);

    /// <summary>The journal, newest first (by account: along its chain); <paramref name="before"/> is the previous page's cursor, 0 for the newest.</summary>
    Task<Page<LedgerTransfer>> TransfersAsync(string? account, long before, int limit, CancellationToken ct = default);

    Task<LedgerReport> VerifyAsync(int feeBps, CancellationToken ct = default);

    Task<OfferRecord> CreateOfferAsync(OfferRecord offer, CancellationToken ct = default);

    Task<IReadOnlyList<OfferRecord>> OffersAsync(CancellationToken ct = default);

    Task<OfferRecord> WithdrawOfferAsync(long id, long? providerId, long nowMs, CancellationToken ct = default);

    /// <summary>
    /// The tenant's answer to a proposed reserved contract (<paramref name="tenantId"/> null: the operator on its
    /// behalf). Accepting escrows the contract's value from the wallet in the same transaction; either answer is final,
    /// and a contract whose window has begun can no longer be accepted.
    /// </summary>
    Task<OfferRecord> AnswerContractAsync(long id, long? tenantId, bool accept, long nowMs, CancellationToken ct = default);

    Task<ProgrammeRecord> CreateProgrammeAsync(ProgrammeRecord programme, CancellationToken ct = default);

    Task<IReadOnlyList<ProgrammeRecord>> ProgrammesAsync(CancellationToken ct = default);

    Task<VoucherRecord> IssueVoucherAsync(long programmeId, long tenantId, long amountFen, long validToMs, long nowMs, CancellationToken ct = default);

    Task<IReadOnlyList<VoucherRecord>> VouchersAsync(long? tenantId, long? programmeId, CancellationToken ct = default);

    /// <summary>Returns what expired vouchers have left to their programmes; the number of vouchers touched.</summary>
    Task<int> ExpireVouchersAsync(long nowMs, CancellationToken ct = default);

    Task<RelationRecord> AddRelationAsync(long tenantId, long providerId, string note, long nowMs, CancellationToken ct = default);

    Task<IReadOnlyList<RelationRecord>> RelationsAsync(CancellationToken ct = default);

    Task<IReadOnlyList<SettlementRecord>> SettlementsAsync(SettlementQuery query, CancellationToken ct = default);

    /// <summary>
    /// Settles every reserved contract whose window ended or that was withdrawn: posts the escrowed value (pro rata when
    /// ended early) and pays the provider less the fee. Returns how many were settled.
    /// </summary>
    Task<int> SettleContractsAsync(long nowMs, int feeBps, CancellationToken ct = default);

    /// <summary>Ends a held attempt on its own (recovery, or a cancelled job whose provider vanished); false when it was not held.</summary>
    Task<bool> SettleAsync(long jobId, SettlePlan plan, int feeBps, long nowMs, CancellationToken ct = default);

    Task<RoundRecord> RecordRoundAsync(RoundRecord round, CancellationToken ct = default);

    Task<IReadOnlyList<RoundRecord>> RoundsAsync(string? instrument, int limit, CancellationToken ct = default);
}
