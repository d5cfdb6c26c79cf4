namespace Suanli.Core.Domain;

/// <summary>
/// Resources of one task of a job. <see cref="GpuMilli"/> is the share of each requested card (1000 = whole card; below
/// 1000 only with <see cref="GpuCount"/> = 1, a sharing task). <see cref="AcceleratorModels"/> empty = any model.
/// </summary>
public sealed record TaskResources(
    long MilliCpu,
    long MemoryMiB,
    int GpuCount = 0,
    int GpuMilli = 0,
    IReadOnlyList<string>? AcceleratorModels = null)
{
    /// <summary>Allowed accelerator models; empty = any.</summary>
    public IReadOnlyList<string> Models => AcceleratorModels ?? [];

    /// <summary>Total milli-GPU of the task (count × share).</summary>
    public long TotalGpuMilli => (long)GpuCount * GpuMilli;

    /// <summary>True when the task shares one card with others (one card, less than 1000 milli).</summary>
    public bool IsSharing => GpuCount == 1 && GpuMilli is > 0 and < 1000;

    /// <summary>Kind index used by GPU clustering: 0 = CPU only, 1 = sharing, 2 + min(count, 8) - 1 = whole-card count.</summary>
    public int Kind => GpuCount == 0 || GpuMilli == 0 ? 0 : IsSharing ? 1 : 1 + Math.Min(GpuCount, 8);

    /// <summary>Number of kind indices (see <see cref="Kind"/>).</summary>
    public const int KindCount = 10;
}

/// <summary>When a dependency holds (Slurm's --dependency kinds).</summary>
public enum DependencyKind
{
    /// <summary>The other job ended successfully.</summary>
    AfterOk,

    /// <summary>The other job ended unsuccessfully (failed, cancelled or lost).</summary>
    AfterNotOk,

    /// <summary>The other job ended, however.</summary>
    AfterAny,
}

/// <summary>A job may start only once <see cref="JobId"/> has ended as <see cref="Kind"/> says.</summary>
public readonly record struct JobDependency(DependencyKind Kind, long JobId)
{
    /// <summary>Slurm's spelling: afterok, afternotok, afterany.</summary>
    public string KindName => Kind switch
    {
        DependencyKind.AfterOk => "afterok",
        DependencyKind.AfterNotOk => "afternotok",
        _ => "afterany",
    };

    /// <summary>Parses Slurm's spelling; null when unknown.</summary>
    public static DependencyKind? ParseKind(string kind) => kind switch
    {
        "afterok" => DependencyKind.AfterOk,
        "afternotok" => DependencyKind.AfterNotOk,
        "afterany" => DependencyKind.AfterAny,
        _ => null,
    };
}

/// <summary>
/// A job that is one element of an array: at most <see cref="Limit"/> elements of array <see cref="ArrayId"/> hold
/// resources at once (Slurm's --array=…%N).
/// </summary>
public sealed record ArrayMembership(long ArrayId, int Limit);

/// <summary>Where and how a job may run, beyond its resources.</summary>
public sealed record JobConstraints(
    IReadOnlyList<string>? Regions = null,
    IReadOnlyList<string>? Providers = null,
    string? UserRegion = null,
    int? MaxLatencyMs = null,
    string? DataRegion = null)
{
    public static JobConstraints None { get; } = new();
}

/// <summary>
/// A job as the scheduler sees it. It carries no actual run time: the scheduler is online and only knows the requested
/// time limit. Times are seconds on the scheduler's clock (simulated or real epoch seconds). Money is decimal.
/// <see cref="Tier"/> is the sales tier the job buys (Market.Tiers); null = on-demand.
/// </summary>
public sealed record JobSpec(
    long Id,
    string Tenant,
    TaskResources Task,
    int Tasks,
    long SubmitTime,
    long RequestedSeconds,
    int PriorityClass = 0,
    long? Deadline = null,
    JobConstraints? Constraints = null,
    decimal? Budget = null,
    string? Tier = null,
    IReadOnlyList<JobDependency>? Dependencies = null,
    ArrayMembership? Array = null)
{
    /// <summary>Dependencies, never null.</summary>
    public IReadOnlyList<JobDependency> After => Dependencies ?? [];

    /// <summary>Constraints, never null.</summary>
    public JobConstraints Where => Constraints ?? JobConstraints.None;

    /// <summary>
    /// Processor count used by the size-aware queue orders (SAF, F1): cards when the job asks for accelerators, else
    /// whole cores (milli-CPU rounded up), times the task count.
    /// </summary>
    public long Processors => (long)Tasks * (Task.GpuCount > 0 ? Task.GpuCount : Math.Max(1, (Task.MilliCpu + 999) / 1000));
}

/// <summary>A tenant with sector tags, a fair-share weight and optional quotas (null = unlimited).</summary>
public sealed record Tenant(
    string Id,
    IReadOnlyList<string> Sectors,
    double Weight = 1.0,
    long? QuotaMilliCpu = null,
    long? QuotaGpuMilli = null)
{
    /// <summary>The tenant id of jobs whose submitter is not known (an SWF log's user -1).</summary>
    public const string Unknown = "unknown";
}
