using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>
/// What a queue order may look at besides the job: the clock, fair-share usage and a run-time predictor fed only by
/// finished jobs (null when the caller keeps none). All of it is online information.
/// </summary>
public readonly record struct QueueContext(long Now, IReadOnlyDictionary<string, double> TenantShare, RunTimePredictor? Predictor = null,
    JobSpec? LastStarted = null);

/// <summary>
/// Queue order plugin: a key per job, smaller first. Jobs are ordered by priority class (higher first), then this key,
/// then submit time, then id. <see cref="IsDynamic"/> orders are re-evaluated every cycle; static keys may be cached.
/// </summary>
public abstract class QueueOrder
{
    /// <summary>Registered name.</summary>
    public abstract string Name { get; }

    /// <summary>True when the key changes with time or usage (fair share); false when it depends on the job only.</summary>
    public virtual bool IsDynamic => false;

    /// <summary>The ordering key; smaller runs first.</summary>
    public abstract double Key(JobSpec job, in QueueContext context);
}

/// <summary>First come, first served: submit time.</summary>
public sealed class FcfsOrder : QueueOrder
{
    public override string Name => "fcfs";

    public override double Key(JobSpec job, in QueueContext context) => job.SubmitTime;
}

/// <summary>Shortest job first by requested time (the scheduler never sees actual run times).</summary>
public sealed class SjfOrder : QueueOrder
{
    public override string Name => "sjf";

    public override double Key(JobSpec job, in QueueContext context) => job.RequestedSeconds;
}

/// <summary>Smallest area first: requested time × processors.</summary>
public sealed class SafOrder : QueueOrder
{
    public override string Name => "saf";

    public override double Key(JobSpec job, in QueueContext context) => (double)job.RequestedSeconds * job.Processors;
}

/// <summary>
/// F1 of Carastan-Santos and de Camargo (SC'17): log10(requested) × processors + 870 × log10(submit), with 0.1 in place
/// of a non-positive argument (as in the RLScheduler artifact).
/// </summary>
public sealed class F1Order : QueueOrder
{
    public override string Name => "f1";

    public override double Key(JobSpec job, in QueueContext context)
    {
        double req = job.RequestedSeconds > 0 ? job.RequestedSeconds : 0.1;
        double submit = job.SubmitTime > 0 ? job.SubmitTime : 0.1;
        return (Math.Log10(req) * job.Processors) + (870 * Math.Log10(submit));
    }
}

/// <summary>
/// Weighted fair share: tenants with the least decayed dominant-share usage per unit of weight go first
/// (Slurm's fair-share factor and DRF order the same way); within a tenant, submit order.
/// </summary>
public sealed class FairShareOrder : QueueOrder
{
    public override string Name => "fair-share";

    public override bool IsDynamic => true;

    public override double Key(JobSpec job, in QueueContext context) =>
        context.TenantShare.TryGetValue(job.Tenant, out var share) ? share : 0;
}

/// <summary>The one comparison every queue uses: priority class (higher first), key, submit time, id.</summary>
public static class QueueOrdering
{
    /// <summary>Negative when job <paramref name="a"/> (with key <paramref name="keyA"/>) goes before <paramref name="b"/>.</summary>
    public static int Compare(JobSpec a, double keyA, JobSpec b, double keyB)
    {
        var c = b.PriorityClass.CompareTo(a.PriorityClass);
        if (c == 0)
        {
            c = keyA.CompareTo(keyB);
        }

        if (c == 0)
        {
            c = a.SubmitTime.CompareTo(b.SubmitTime);
        }

        return c != 0 ? c : a.Id.CompareTo(b.Id);
    }
}
