using System.Diagnostics;
using Suanli.Core.Domain;
using Suanli.Core.Scheduling;

namespace Suanli.Simulation.Bench;

/// <summary>Result of the synthetic scheduler benchmark.</summary>
public sealed record SchedulerBenchResult(int Nodes, int Providers, int Pending, int Cycles, long Decisions, long Started,
    double DecisionsPerSecond, double CycleMsP50, double CycleMsP99);

/// <summary>
/// Synthetic pool and queue for measuring the scheduling core: <c>nodes</c> nodes across <c>providers</c> providers
/// (each with a CPU group and an 8-card GPU group, models and prices varying), and <c>pending</c> jobs of mixed shapes
/// (CPU jobs of 1-32 cores, 1-8 card jobs, card-sharing jobs, gangs of up to 8 tasks) from a seeded generator.
/// A decision is one job considered by a cycle (started, reserved or left waiting with its reason).
/// </summary>
public static class SchedulerBench
{
    /// <summary>Builds the synthetic pool.</summary>
    public static Pool BuildPool(int nodes, int providers, int seed = 1)
    {
        var rng = new Random(seed);
        string[] models = ["A100", "H800", "Ascend910B", "V100", "T4"];
        string[] regions = ["beijing", "shanghai", "henan", "guizhou", "gansu", "ningxia", "guangdong", "chengdu"];
        var provs = new List<Provider>();
        var groups = new List<NodeGroup>();
        var perProvider = Math.Max(2, nodes / providers);
        for (var p = 0; p < providers; p++)
        {
            var id = $"p{p:000}";
            provs.Add(new Provider(id, regions[p % regions.Length], id));
            var gpuNodes = perProvider / 2;
            groups.Add(new NodeGroup(id + "-cpu", id, new NodeShape(64000, 262144), perProvider - gpuNodes, 4m + rng.Next(0, 200) / 100m));
            groups.Add(new NodeGroup(id + "-gpu", id, new NodeShape(96000, 1048576, models[rng.Next(models.Length)], 8, GpuSharing: true), gpuNodes, 60m + rng.Next(0, 6000) / 100m));
        }

        return new Pool(provs, groups);
    }

    /// <summary>Builds the synthetic queue.</summary>
    public static List<JobSpec> BuildJobs(int count, int seed = 2)
    {
        var rng = new Random(seed);
        var jobs = new List<JobSpec>(count);
        for (var i = 0; i < count; i++)
        {
            var kind = rng.Next(10);
            TaskResources task = kind switch
            {
                < 4 => new TaskResources(1000L * (1 << rng.Next(6)), 4096L * (1 + rng.Next(8))),
                < 7 => new TaskResources(8000, 65536, 1 << rng.Next(4), 1000),
                < 9 => new TaskResources(4000, 16384, 1, 100 * (1 + rng.Next(9))),
                _ => new TaskResources(16000, 131072, 8, 1000),
            };
            var tasks = kind == 9 ? 1 + rng.Next(8) : 1;
            jobs.Add(new JobSpec(i, "t" + rng.Next(50), task, tasks, rng.Next(0, 3600), 60L * (1 + rng.Next(240)), PriorityClass: rng.Next(3)));
        }

        return jobs;
    }

    /// <summary>
    /// Runs <paramref name="cycles"/> cycles: the first on an empty pool, each later one after the earliest-ending tenth
    /// of the running jobs completed. Wall time is measured with <see cref="Stopwatch"/> (measurement only).
    /// </summary>
    public static SchedulerBenchResult Run(int nodes, int providers, int pending, string policy = "fcfs", int cycles = 20, BackfillMode backfill = BackfillMode.Easy)
    {
        var pool = BuildPool(nodes, providers);
        var scheduler = new Scheduler(pool, PolicyRegistry.Build(policy, pool, backfill: backfill));
        var state = new ClusterState(pool);
        var queue = new HashSet<JobSpec>(BuildJobs(pending), ReferenceEqualityComparer.Instance);
        var running = new List<RunningJob>();
        var times = new List<double>();
        long decisions = 0, started = 0, now = 3600;
        for (var c = 0; c < cycles; c++)
        {
            var input = new CycleInput(now, queue, running);
            var t0 = Stopwatch.GetTimestamp();
            var result = scheduler.RunCycle(input, state);
            times.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            decisions += result.Started.Count + result.WaitingCount;
            started += result.Started.Count;
            foreach (var p in result.Started)
            {
                queue.Remove(p.Job);
                scheduler.Forget(p.Job);
                running.Add(new RunningJob(p.Job, now, p.Allocation));
            }

            running.Sort((a, b) => a.ExpectedEnd(now).CompareTo(b.ExpectedEnd(now)));
            var finish = Math.Max(1, running.Count / 10);
            foreach (var r in running.Take(finish))
            {
                state.Release(r.Allocation);
            }

            now = running.Count > 0 ? running[Math.Min(finish, running.Count) - 1].ExpectedEnd(now) : now + 60;
            running.RemoveRange(0, Math.Min(finish, running.Count));
        }

        var total = times.Sum() / 1000;
        var sorted = times.Order().ToArray();
        return new SchedulerBenchResult(nodes, providers, pending, cycles, decisions, started, decisions / Math.Max(1e-9, total),
            Engine.SimulationReport.Percentile(sorted, 0.5), Engine.SimulationReport.Percentile(sorted, 0.99));
    }
}
