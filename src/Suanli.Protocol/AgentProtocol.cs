namespace Suanli.Protocol;

/// <summary>
/// The agent protocol's routes (all POST, JSON, the provider key as bearer token). Every message after registration
/// carries the fencing epoch the registration returned: a superseded agent can change nothing.
/// </summary>
public static class AgentRoutes
{
    public const string Register = "/api/v1/agent/register";
    public const string Heartbeat = "/api/v1/agent/heartbeat";
    public const string Lease = "/api/v1/agent/lease";

    /// <summary>The report route of one job.</summary>
    public static string Report(long job) => $"/api/v1/agent/jobs/{job}/report";

    /// <summary>The output route of one job.</summary>
    public static string Logs(long job) => $"/api/v1/agent/jobs/{job}/logs";
}

/// <summary>What an agent may report about a job it holds.</summary>
public static class AgentStates
{
    /// <summary>The process started (<see cref="AgentReport.ObservedMs"/> is when).</summary>
    public const string Running = "running";

    /// <summary>It ended with exit code 0 on its own.</summary>
    public const string Succeeded = "succeeded";

    /// <summary>It ended otherwise: a non-zero exit, a limit, a start that failed.</summary>
    public const string Failed = "failed";

    /// <summary>The agent stopped it itself (shutting down), not the job failing: the control plane requeues it.</summary>
    public const string Interrupted = "interrupted";

    public static IReadOnlyList<string> All { get; } = [Running, Succeeded, Failed, Interrupted];
}

/// <summary>
/// A node group a provider offers: <paramref name="Nodes"/> nodes of one shape (milli-CPU, MiB, accelerators of one
/// model), an optional price per node-hour, and whether its cards may be shared by fractional GPU tasks.
/// </summary>
public sealed record GroupOffer(string Id, long MilliCpu, long MemoryMiB, string? Accelerator, int Accelerators, int Nodes, decimal? PricePerNodeHour, bool GpuSharing = false);

/// <summary>Registration: the agent's node groups, how it isolates jobs, and whether it replaces a live agent of its provider.</summary>
public sealed record AgentRegister(string? Region, IReadOnlyList<GroupOffer> Groups, string? Isolation = null, bool TakeOver = false);

/// <summary>
/// The registration's answer: the new fencing epoch and the cadence the agent must keep. <c>OutageGraceSeconds</c>: how
/// long the agent may keep its jobs running while the control plane refuses connections (0: self-fence after the lease).
/// </summary>
public sealed record AgentRegistered(long ProviderId, string Name, long Epoch, double HeartbeatSeconds, double LeaseTimeoutSeconds, double OutageGraceSeconds = 0);

/// <summary>A heartbeat: the epoch and the jobs whose processes run now.</summary>
public sealed record AgentHeartbeat(long Epoch, IReadOnlyList<long>? Running);

/// <summary>Jobs to stop now (cancelled, or no longer this agent's) and spot or preemption notices.</summary>
public sealed record AgentHeartbeatReply(IReadOnlyList<long> Stop, IReadOnlyList<PreemptNotice> Notices);

/// <summary>A notice that a job will be stopped in <paramref name="Seconds"/> (signal and notice file to the job), and why.</summary>
public sealed record PreemptNotice(long Job, int Seconds, string Reason);

/// <summary>A long poll for leased jobs (at most 30 s).</summary>
public sealed record AgentLease(long Epoch, double? WaitSeconds);

/// <summary>A leased job handed to an agent: everything it needs to start the job.</summary>
public sealed record LeasedJob(long Id, int Attempt, string Name, IReadOnlyList<string>? Command, string? Script, IReadOnlyDictionary<string, string> Env,
    decimal Cpu, long MemoryMiB, int Tasks, long TimeLimitSeconds, string Group, long Epoch, string? Format, long TenantId);

/// <summary>The lease poll's answer.</summary>
public sealed record LeasePage(IReadOnlyList<LeasedJob> Items, string? Next = null);

/// <summary>
/// An agent's report. <c>ObservedMs</c> is when the agent saw the change happen (Unix ms, its clock): the process start
/// for <c>running</c>, its end otherwise; the control plane meters from it, bounded by its own lease and receipt times,
/// so a report delayed by a control-plane outage does not bill the outage. <c>State</c> is one of <see cref="AgentStates"/>.
/// </summary>
public sealed record AgentReport(long Epoch, string State, int? ExitCode, string? Message, long? BackendElapsedSeconds = null, string? BackendTres = null,
    long? ObservedMs = null, long? ObservedStartMs = null);

/// <summary>A chunk of a job's output; <c>Offset</c> (bytes already sent for this attempt) makes a resend idempotent.</summary>
public sealed record AgentLog(long Epoch, string Data, long? Offset);
