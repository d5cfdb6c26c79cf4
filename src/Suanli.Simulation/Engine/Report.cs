namespace Suanli.Simulation.Engine;

/// <summary>Aggregate statistics of a group of jobs.</summary>
public sealed record Breakdown(int Jobs, double AvgWaitSeconds, double AvgBoundedSlowdown, double AvgJctSeconds, decimal? Cost);

/// <summary>
/// The simulator's summary: the fields of the CLI contract plus breakdowns. <see cref="WallSeconds"/> is the whole
/// command; <see cref="LoadSeconds"/> reading and parsing the trace; <see cref="SimulateSeconds"/> the replay itself.
/// </summary>
public sealed record SimulationReport(
    int Jobs,
    long Skipped,
    long Malformed,
    double AvgBoundedSlowdown,
    double AvgWaitSeconds,
    double P50WaitSeconds,
    double P95WaitSeconds,
    double P99WaitSeconds,
    double AvgJctSeconds,
    double Utilization,
    long MakespanSeconds,
    decimal? Cost,
    long Cycles,
    double WallSeconds,
    double LoadSeconds,
    double SimulateSeconds,
    IReadOnlyDictionary<string, Breakdown> PerTenant,
    IReadOnlyDictionary<string, Breakdown> PerProvider,
    IReadOnlyDictionary<string, long> SkippedByReason,
    IReadOnlyList<string> SkippedExamples)
{
    /// <summary>
    /// Summarises outcomes. Utilization is busy capacity over (last end − first submit) × capacity, on cards when the
    /// pool has accelerators, else on CPU.
    /// </summary>
    public static SimulationReport Build(Simulator.Result r, Traces.Trace trace, double wallSeconds, double loadSeconds = 0, double simulateSeconds = 0)
    {
        var jobs = r.Jobs;
        var waits = jobs.Select(j => (double)j.Wait).Order().ToArray();
        long first = jobs.Count > 0 ? jobs.Min(j => j.Submit) : 0, last = jobs.Count > 0 ? jobs.Max(j => j.End) : 0;
        var span = Math.Max(0, last - first);
        var gpuPool = r.Pool.Groups.Sum(g => (double)g.Shape.AcceleratorCount * g.NodeCount);
        var cpuPool = r.Pool.Groups.Sum(g => (double)g.Shape.MilliCpu * g.NodeCount);
        var specs = trace.Jobs.ToDictionary(j => j.Spec.Id, j => j.Spec);
        double busy = 0;
        foreach (var j in jobs)
        {
            var s = specs[j.Id];
            busy += gpuPool > 0 ? s.Task.TotalGpuMilli / 1000.0 * s.Tasks * j.Run : s.Task.MilliCpu * (double)s.Tasks * j.Run;
        }

        var capacity = gpuPool > 0 ? gpuPool : cpuPool;
        var skippedReasons = new Dictionary<string, long>(trace.SkippedByReason, StringComparer.Ordinal);
        foreach (var s in r.Skipped)
        {
            var key = s.Reason.StartsWith("infeasible", StringComparison.Ordinal) ? "infeasible on this cluster" : s.Reason;
            skippedReasons[key] = skippedReasons.GetValueOrDefault(key) + 1;
        }

        var examples = trace.Examples.Select(e => $"line {e.Line}: {e.Reason}")
            .Concat(r.Skipped.Take(Traces.Trace.KeptExamples).Select(s => $"job {s.Id}: {s.Reason}")).Take(2 * Traces.Trace.KeptExamples).ToList();
        return new SimulationReport(
            jobs.Count,
            trace.Skipped + r.Skipped.Count,
            trace.Malformed,
            jobs.Count > 0 ? jobs.Average(j => j.BoundedSlowdown) : 0,
            jobs.Count > 0 ? waits.Average() : 0,
            Percentile(waits, 0.50),
            Percentile(waits, 0.95),
            Percentile(waits, 0.99),
            jobs.Count > 0 ? jobs.Average(j => (double)(j.End - j.Submit)) : 0,
            span > 0 && capacity > 0 ? busy / (span * capacity) : 0,
            span,
            jobs.Any(j => j.Cost is not null) ? jobs.Sum(j => j.Cost ?? 0) : null,
            r.Cycles,
            wallSeconds,
            loadSeconds,
            simulateSeconds,
            By(jobs, j => j.Tenant),
            By(jobs, j => j.Provider),
            skippedReasons,
            examples);
    }

    private static SortedDictionary<string, Breakdown> By(List<JobOutcome> jobs, Func<JobOutcome, string> key) =>
        new(jobs.GroupBy(key).ToDictionary(g => g.Key, g => new Breakdown(
            g.Count(), g.Average(j => (double)j.Wait), g.Average(j => j.BoundedSlowdown), g.Average(j => (double)(j.End - j.Submit)),
            g.Any(j => j.Cost is not null) ? g.Sum(j => j.Cost ?? 0) : null)), StringComparer.Ordinal);

    /// <summary>Nearest-rank percentile of sorted values (0 for none).</summary>
    public static double Percentile(double[] sorted, double q) =>
        sorted.Length == 0 ? 0 : sorted[Math.Clamp((int)Math.Ceiling(q * sorted.Length) - 1, 0, sorted.Length - 1)];
}
