namespace Suanli.Server.Storage;

/// <summary>Job states. Terminal: succeeded, failed, cancelled, lost (lost only when no retry is left).</summary>
public static class JobStates
{
    public const string Queued = "queued";
    public const string Leased = "leased";
    public const string Running = "running";
    public const string Succeeded = "succeeded";
    public const string Failed = "failed";
    public const string Cancelled = "cancelled";
    public const string Lost = "lost";

    /// <summary>All states, in lifecycle order.</summary>
    public static IReadOnlyList<string> All { get; } = [Queued, Leased, Running, Succeeded, Failed, Cancelled, Lost];

    /// <summary>True for a state a job never leaves.</summary>
    public static bool IsTerminal(string state) => state is Succeeded or Failed or Cancelled or Lost;
}

/// <summary>Key roles.</summary>
public static class Roles
{
    public const string Operator = "operator";
    public const string Provider = "provider";
    public const string Tenant = "tenant";
}

/// <summary>A tenant (an organisation that submits work) with its sector and fair-share weight.</summary>
public sealed record TenantRecord(long Id, string Name, string Sector, double Weight, long CreatedMs);

/// <summary>An API key's metadata (the secret itself is never stored, only its SHA-256).</summary>
public sealed record KeyRecord(long Id, string Prefix, string Role, long? TenantId, long? ProviderId, long CreatedMs, long? RevokedMs);

/// <summary>A provider and the state of its agent.</summary>
public sealed record ProviderRecord(long Id, string Name, string Region, string State, long Epoch, long? LastHeartbeatMs, IReadOnlyList<GroupOffer> Groups, long CreatedMs);

/// <summary>Provider states.</summary>
public static class ProviderStates
{
    public const string New = "new";
    public const string Ready = "ready";
    public const string Lost = "lost";
}

/// <summary>A job row. <see cref="Spec"/> is the validated job document (JSON).</summary>
public sealed record JobRecord(
    long Id,
    long TenantId,
    string Name,
    string Spec,
    string State,
    int Attempt,
    int MaxAttempts,
    int PriorityClass,
    long SubmittedMs,
    long? ProviderId,
    string? GroupId,
    long? Epoch,
    string? Allocation,
    long? StartedMs,
    long? EndedMs,
    int? ExitCode,
    string? Reason);

/// <summary>One entry of a job's history.</summary>
public sealed record JobEvent(long JobId, int Seq, long AtMs, string State, string Message);

/// <summary>A chunk of a job's output.</summary>
public sealed record LogChunk(long Seq, string Data, int Attempt = 1);

/// <summary>Metered use of one attempt of a job.</summary>
public sealed record UsageRecord(
    long JobId,
    int Attempt,
    long TenantId,
    long ProviderId,
    string GroupId,
    string? Model,
    int Cards,
    long GpuMilli,
    long MilliCpu,
    long MemoryMiB,
    long StartedMs,
    long EndedMs)
{
    /// <summary>Elapsed seconds as the provider's own system (Slurm) accounted the attempt; null when it reports none.</summary>
    public long? BackendElapsedSeconds { get; init; }

    /// <summary>Allocated resources as the provider's system reported them (Slurm TRES, e.g. "cpu=2,mem=1G,node=1").</summary>
    public string? BackendTres { get; init; }
}

/// <summary>One page of a list and the cursor of the next page (null at the end).</summary>
public sealed record Page<T>(IReadOnlyList<T> Items, string? Next);

