namespace Suanli.Server.Storage;

/// <summary>A job to insert: everything the submit path validated.</summary>
/// <summary>
/// An Idempotency-Key to record in the same transaction as the resource it creates (so a crash can never leave the
/// resource without the key, which would let a retry make a second one).
/// </summary>
public sealed record IdempotencyClaim(string Scope, string Key, string RequestHash);

/// <summary>Output limits.</summary>
public static class LogLimits
{
    /// <summary>Default cap on one attempt's stored output: 64 MiB.</summary>
    public const long DefaultCapBytes = 64L << 20;

    /// <summary>The line that ends a truncated attempt's log.</summary>
    public static string Marker(long capBytes, long droppedBytes) =>
        $"\n[suanli] output truncated: this attempt's output passed the {capBytes.ToString(System.Globalization.CultureInfo.InvariantCulture)}-byte cap; "
        + $"{droppedBytes.ToString(System.Globalization.CultureInfo.InvariantCulture)} bytes were dropped\n";
}

public sealed record NewJob(long TenantId, string Name, string Spec, int MaxAttempts, int PriorityClass, long SubmittedMs, string? IdempotencyKey);

/// <summary>
/// One guarded state change of a job, applied atomically with its event (and usage row, when given). It succeeds only
/// when the job is in one of <see cref="From"/> and, with <see cref="RequireEpoch"/>, holds that fencing epoch;
/// otherwise the store throws <see cref="StoreConflictException"/> and changes nothing.
/// </summary>
public sealed record Transition(long JobId, IReadOnlyList<string> From, string To, string Message)
{
    public long? RequireEpoch { get; init; }

    public long? RequireProvider { get; init; }

    /// <summary>Sets provider, group, epoch and allocation (a lease).</summary>
    public (long Provider, string Group, long Epoch, string Allocation)? Lease { get; init; }

    /// <summary>Clears the placement and increments the attempt (a retry goes back to the queue).</summary>
    public bool Requeue { get; init; }

    /// <summary>With <see cref="Requeue"/>: the attempt does not count against the retry limit (a preemption).</summary>
    public bool GrantAttempt { get; init; }

    public long? StartedMs { get; init; }

    public long? EndedMs { get; init; }

    public int? ExitCode { get; init; }

    public string? Reason { get; init; }

    public UsageRecord? Usage { get; init; }

    public long AtMs { get; init; }

    /// <summary>Escrow to hold with a lease (priced capacity); the lease fails with insufficient_funds when the wallet cannot cover it.</summary>
    public HoldPlan? Hold { get; init; }

    /// <summary>Ends the attempt's hold (charge or void) in the same transaction; ignored when the attempt holds nothing.</summary>
    public SettlePlan? Settle { get; init; }

    /// <summary>Platform fee in basis points for <see cref="Settle"/>.</summary>
    public int FeeBps { get; init; }
}

/// <summary>Filter and cursor of a job listing.</summary>
public sealed record JobQuery(long? TenantId, string? State, long? After, int Limit);

/// <summary>
/// The control plane's storage port: operation-shaped (each method is one business operation and one transaction),
/// so that another engine (PostgreSQL) can implement it and pass the same compliance tests.
/// </summary>
public interface IControlStore : IAsyncDisposable
{
    Task<TenantRecord> CreateTenantAsync(string name, string sector, double weight, long nowMs, IdempotencyClaim? once = null, CancellationToken ct = default);

    Task<IReadOnlyList<TenantRecord>> ListTenantsAsync(CancellationToken ct = default);

    Task<TenantRecord?> GetTenantAsync(long id, CancellationToken ct = default);

    Task<KeyRecord> CreateKeyAsync(byte[] hash, string prefix, string role, long? tenantId, long? providerId, long nowMs, IdempotencyClaim? once = null, CancellationToken ct = default);

    Task<KeyRecord?> FindKeyAsync(byte[] hash, CancellationToken ct = default);

    Task<IReadOnlyList<KeyRecord>> ListKeysAsync(CancellationToken ct = default);

    Task<bool> RevokeKeyAsync(long id, long nowMs, CancellationToken ct = default);

    Task<ProviderRecord> CreateProviderAsync(string name, string region, long nowMs, IdempotencyClaim? once = null, CancellationToken ct = default);

    Task<ProviderRecord?> GetProviderAsync(long id, CancellationToken ct = default);

    Task<ProviderRecord?> FindProviderAsync(string name, CancellationToken ct = default);

    Task<IReadOnlyList<ProviderRecord>> ListProvidersAsync(CancellationToken ct = default);

    /// <summary>
    /// Registers (or re-registers) an agent: stores its offer, moves to a new fencing epoch and marks it ready. Jobs
    /// leased under an older epoch are returned so the caller can treat them as lost.
    /// </summary>
    Task<(ProviderRecord Provider, IReadOnlyList<JobRecord> Orphans)> RegisterAsync(long providerId, string region, IReadOnlyList<GroupOffer> groups, long nowMs, CancellationToken ct = default);

    /// <summary>Records a heartbeat; throws <see cref="StoreConflictException"/> (stale_epoch) for an old epoch or a lost provider.</summary>
    Task HeartbeatAsync(long providerId, long epoch, long nowMs, CancellationToken ct = default);

    Task MarkProviderLostAsync(long providerId, long epoch, long nowMs, CancellationToken ct = default);

    /// <summary>Inserts a job; with an idempotency key already used by the tenant, returns that job and true.</summary>
    Task<(JobRecord Job, bool Replayed)> SubmitAsync(NewJob job, CancellationToken ct = default);

    Task<JobRecord?> GetJobAsync(long id, CancellationToken ct = default);

    Task<Page<JobRecord>> ListJobsAsync(JobQuery query, CancellationToken ct = default);

    /// <summary>Jobs in queued, leased or running (for recovery after a restart).</summary>
    Task<IReadOnlyList<JobRecord>> ActiveJobsAsync(CancellationToken ct = default);

    /// <summary>
    /// Each tenant's last <paramref name="perTenant"/> jobs that ran and ended succeeded or failed, oldest end first
    /// (to rebuild the run-time predictor after a restart).
    /// </summary>
    Task<IReadOnlyList<JobRecord>> RecentFinishedJobsAsync(int perTenant, CancellationToken ct = default);

    Task<JobRecord> ApplyAsync(Transition transition, CancellationToken ct = default);

    /// <summary>
    /// Appends output of an attempt. With an <paramref name="offset"/> (the sender's position in that attempt's output)
    /// a chunk sent twice is stored once.
    /// </summary>
    /// <remarks>
    /// An attempt stores at most <paramref name="capBytes"/> bytes (UTF-8) of output; what comes after is dropped and the
    /// attempt's log then ends with one line saying so and how many bytes were dropped (updated as more arrive).
    /// </remarks>
    Task AppendLogAsync(long jobId, int attempt, long? offset, string data, long capBytes = LogLimits.DefaultCapBytes, CancellationToken ct = default);

    /// <summary>Deletes the output of jobs that ended before <paramref name="endedBeforeMs"/>; returns the chunks removed.</summary>
    Task<int> PurgeLogsAsync(long endedBeforeMs, CancellationToken ct = default);

    /// <summary>A job's output after sequence number <paramref name="after"/>; each chunk names its attempt (only one attempt's with <paramref name="attempt"/>).</summary>
    Task<IReadOnlyList<LogChunk>> ReadLogsAsync(long jobId, long after, int limit, int? attempt = null, CancellationToken ct = default);

    Task<IReadOnlyList<JobEvent>> EventsAsync(long jobId, CancellationToken ct = default);

    Task<IReadOnlyList<UsageRecord>> UsageAsync(long? tenantId, long fromMs, long toMs, CancellationToken ct = default);

    /// <summary>Every metered attempt of one job.</summary>
    Task<IReadOnlyList<UsageRecord>> JobUsageAsync(long jobId, CancellationToken ct = default);

    /// <summary>The resource a creating request with this idempotency key made before, or null.</summary>
    Task<(string Resource, string? RequestHash)?> IdempotentGetAsync(string scope, string key, CancellationToken ct = default);


    Task<IReadOnlyDictionary<string, long>> CountJobsByStateAsync(CancellationToken ct = default);
}
