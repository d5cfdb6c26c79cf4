using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>
/// Suanli's flagship queue order (see docs/policies.md): smallest requested area first, with an aging term that lets
/// a job's priority grow with its expansion factor so large jobs cannot starve. Online: it reads only the requested
/// time, the job's size and how long the job has already waited.
/// </summary>
public sealed class SuanliOrder : QueueOrder
{
    public override string Name => "suanli";

    public override bool IsDynamic => true;

    public override double Key(JobSpec job, in QueueContext context)
    {
        double req = Math.Max(10, job.RequestedSeconds);
        var wait = Math.Max(0, context.Now - job.SubmitTime);
        var area = req * job.Processors;

        // Expansion factor so far: (wait + requested) / requested. Dividing the area by its cube favours small jobs
        // while a job waits briefly, and lets long-waiting jobs overtake (WFP3-style aging, Tang et al. 2009).
        var xf = (wait + req) / req;
        return area / (xf * xf * xf);
    }
}
