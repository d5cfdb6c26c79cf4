using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>
/// Suanli's flagship queue order (docs/policies.md): smallest <em>predicted</em> area first, with width weighing less
/// than length and a mild aging term. Key (smaller first) = p^1.25 × n^0.75 / xf^0.1, where p is the run time
/// predicted from the tenant's last two finished jobs (Tsafrir et al. 2007; the request when there is no history,
/// never above the request, at least 10 s), n the processors (cards or cores × tasks) and xf = (wait + p) / p the
/// expansion factor so far. Online: it reads the request, the job's size, how long it has waited and finished jobs
/// only. The exponents were chosen once on windows the evaluation never uses (docs/policies.md, "How it was chosen").
/// </summary>
public sealed class SuanliOrder : QueueOrder
{
    /// <summary>Exponent of the predicted run time.</summary>
    public const double RunExponent = 1.25;

    /// <summary>Exponent of the width (processors).</summary>
    public const double WidthExponent = 0.75;

    /// <summary>Exponent of the expansion factor (aging).</summary>
    public const double AgingExponent = 0.1;

    /// <summary>Floor of the predicted run time in seconds (the bounded-slowdown threshold).</summary>
    public const double MinRunSeconds = 10;

    /// <summary>
    /// Key bonus (log units: the product shrinks e^3.5 ≈ 33 times) of a job identical to the one started last: same
    /// tenant, width, task shape and requested time.
    /// </summary>
    public const double ContinuationBonus = 3.5;

    public override string Name => "suanli";

    public override bool IsDynamic => true;

    public override double Key(JobSpec job, in QueueContext context)
    {
        var p = Math.Max(MinRunSeconds, context.Predictor?.Predict(job) ?? job.RequestedSeconds);
        var wait = Math.Max(0, context.Now - job.SubmitTime);
        var xf = (wait + p) / p;

        // The logarithm of p^a · n^b / xf^c: the same order, three logarithms instead of three powers.
        var key = (RunExponent * Math.Log(p)) + (WidthExponent * Math.Log(Math.Max(1, job.Processors))) - (AgingExponent * Math.Log(xf));
        return context.LastStarted is { } last && IsSibling(job, last) ? key - ContinuationBonus : key;
    }

    /// <summary>
    /// Same submitter (known), same number of tasks, same task resources and same requested time: a run of identical
    /// jobs, such as an array or a parameter sweep, which is best run back to back (a wide one needs the machine drained
    /// once, not once per job).
    /// </summary>
    public static bool IsSibling(JobSpec job, JobSpec other) =>
        job.Tenant != Tenant.Unknown && job.Tenant == other.Tenant && job.Tasks == other.Tasks && job.RequestedSeconds == other.RequestedSeconds
        && job.Task.MilliCpu == other.Task.MilliCpu && job.Task.MemoryMiB == other.Task.MemoryMiB && job.Task.GpuCount == other.Task.GpuCount
        && job.Task.GpuMilli == other.Task.GpuMilli && job.Task.Models.SequenceEqual(other.Task.Models);
}
