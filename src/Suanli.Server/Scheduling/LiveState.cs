using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>A non-terminal job as the control plane holds it in memory.</summary>
internal sealed class LiveJob(JobRecord record, JobDocument doc, JobSpec spec)
{
    public JobRecord Record { get; set; } = record;

    public JobDocument Doc { get; } = doc;

    public JobSpec Spec { get; } = spec;

    /// <summary>Held resources (leased, running, or cancelled while its process may still run).</summary>
    public Allocation? Allocation { get; set; }

    /// <summary>Pool group id ("provider/group") of the allocation.</summary>
    public string? PoolGroup { get; set; }

    /// <summary>
    /// Parts of the allocation that a rebuilt pool put in other pool groups (offers re-partitioned the physical group
    /// under a running job): they hold their nodes in the cluster state until the job ends.
    /// </summary>
    public List<(Allocation Part, string Group)> Parts { get; } = [];

    /// <summary>When the lease failed for want of funds: the wallet generation then, and why (retried once money moves).</summary>
    public (long Global, long Tenant, string Why)? Unfunded { get; set; }

    /// <summary>
    /// True once an agent may have the lease (its lease poll returned the job, or the lease is older than this process):
    /// the job may be running although its running report has not arrived, so it is stopped with a notice, never
    /// simply requeued.
    /// </summary>
    public bool HandedOut { get; set; }

    /// <summary>Its provider was lost and the job was handed to the lifecycle (once).</summary>
    public bool LostHandled { get; set; }

    /// <summary>When this process wrote the job's current lease (ms); null if leased before it started.</summary>
    public long? LeasedMs { get; set; }

    /// <summary>A spot job told to stop: when the notice ends (ms) and why; null otherwise.</summary>
    public (long DeadlineMs, string Why)? Preempting { get; set; }
}

/// <summary>A provider's live state.</summary>
internal sealed class LiveProvider(ProviderRecord record)
{
    public ProviderRecord Record { get; set; } = record;

    public long LastHeartbeatMs { get; set; } = record.LastHeartbeatMs ?? 0;

    public TaskCompletionSource Wake { get; set; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>When this process last heard from the provider's agent (registration or heartbeat); null since a restart.</summary>
    public long? LastSeenMs { get; set; }

    /// <summary>How the agent said it isolates jobs at its last registration (null: its batch system does, or unknown).</summary>
    public string? Isolation { get; set; }
}
