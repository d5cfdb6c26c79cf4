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

    public override string Name => "suanli";

    public override bool IsDynamic => true;

    public override double Key(JobSpec job, in QueueContext context)
    {
        var p = Math.Max(MinRunSeconds, context.Predictor?.Predict(job) ?? job.RequestedSeconds);
        var wait = Math.Max(0, context.Now - job.SubmitTime);
        var xf = (wait + p) / p;

        // The logarithm of p^a · n^b / xf^c: the same order, three logarithms instead of three powers.
        return (RunExponent * Math.Log(p)) + (WidthExponent * Math.Log(Math.Max(1, job.Processors))) - (AgingExponent * Math.Log(xf));
    }
}
