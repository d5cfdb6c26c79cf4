using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Suanli.Core.Domain;
using Suanli.Core.Scheduling;

namespace Suanli.Core.Tests;

public class PropertyTests
{
    private static Pool RandomPool(System.Random rng)
    {
        var groups = new List<NodeGroup>();
        var n = rng.Next(1, 4);
        for (var g = 0; g < n; g++)
        {
            var gpus = rng.Next(0, 3) * 4;
            groups.Add(new NodeGroup("g" + g, "p", new NodeShape(1000L * rng.Next(1, 17), 1024L * rng.Next(1, 9),
                gpus > 0 ? "A100" : null, gpus, GpuSharing: gpus > 0), rng.Next(1, 9)));
        }

        return new Pool([new Provider("p", "r", "s")], groups);
    }

    private static List<JobSpec> RandomJobs(System.Random rng, int count)
    {
        var jobs = new List<JobSpec>();
        for (var i = 0; i < count; i++)
        {
            var gpuCount = rng.Next(0, 3) == 0 ? rng.Next(1, 5) : 0;
            var milli = gpuCount == 1 && rng.Next(2) == 0 ? 100 * rng.Next(1, 10) : 1000;
            jobs.Add(new JobSpec(i, "t" + rng.Next(3), new TaskResources(500L * rng.Next(1, 9), 256L * rng.Next(0, 9), gpuCount, gpuCount > 0 ? milli : 0),
                rng.Next(1, 6), rng.Next(0, 100), rng.Next(1, 500), rng.Next(0, 2)));
        }

        return jobs;
    }

    private static bool NoOverAllocation(ClusterState state, Pool pool)
    {
        for (var g = 0; g < pool.Groups.Count; g++)
        {
            for (var n = 0; n < pool.Groups[g].NodeCount; n++)
            {
                var v = state.Node(g, n);
                if (v.FreeMilliCpu < 0 || v.FreeMemoryMiB < 0)
                {
                    return false;
                }

                foreach (var f in v.FreeGpu)
                {
                    if (f is < 0 or > 1000)
                    {
                        return false;
                    }
                }
            }
        }

        return true;
    }

    [Property(MaxTest = 200)]
    public Property Cycle_NeverOverAllocates_AndGangsAreWhole(int seed, bool conservative, bool preempt)
    {
        var rng = new System.Random(seed);
        var pool = RandomPool(rng);
        var policy = PolicyRegistry.Build(new[] { "fcfs", "sjf", "saf", "f1", "fair-share", "suanli" }[rng.Next(6)], pool,
            backfill: conservative ? BackfillMode.Conservative : BackfillMode.Easy) with { Preemption = preempt };
        var s = new Scheduler(pool, policy);
        var state = new ClusterState(pool);
        var running = new List<RunningJob>();
        var pending = RandomJobs(rng, 30);
        for (var t = 0; t < 5; t++)
        {
            var res = s.RunCycle(new CycleInput(100 * t, pending.ToList(), running.ToList()), state);
            foreach (var p in res.Preempted)
            {
                running.Remove(p);
            }

            foreach (var p in res.Started)
            {
                if (p.Allocation.Slices.Count != p.Job.Tasks)
                {
                    return false.Label($"job {p.Job.Id} got {p.Allocation.Slices.Count} of {p.Job.Tasks} tasks");
                }

                pending.Remove(p.Job);
                running.Add(new RunningJob(p.Job, 100 * t, p.Allocation));
            }

            if (!NoOverAllocation(state, pool))
            {
                return false.Label($"over-allocated after cycle {t}");
            }

            if (running.Count > 0)
            {
                state.Release(running[0].Allocation);
                running.RemoveAt(0);
            }
        }

        return true.ToProperty();
    }

    [Property(MaxTest = 50)]
    public bool Cycle_SameInput_SameDecisions(int seed)
    {
        string Run()
        {
            var rng = new System.Random(seed);
            var pool = RandomPool(rng);
            var s = new Scheduler(pool, PolicyRegistry.Build("fair-share", pool, backfill: BackfillMode.Conservative));
            var res = s.RunCycle(new CycleInput(50, RandomJobs(rng, 40), []), new ClusterState(pool));
            return string.Join(";", res.Started.Select(p => $"{p.Job.Id}@{p.Allocation.Group}:{string.Join(',', p.Allocation.Slices.Select(x => $"{x.Node}/{x.DeviceMask}"))}"))
                + "|" + string.Join(";", res.Waiting.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}"));
        }

        return Run() == Run();
    }

    /// <summary>
    /// The caches that survive between cycles (sorted queue, feasible groups, memoised first reservation) never change
    /// a decision: a scheduler reused across cycles decides exactly as a fresh scheduler given the same input.
    /// </summary>
    [Property(MaxTest = 100)]
    public Property Cycle_CachesAcrossCycles_MatchAFreshScheduler(int seed, bool conservative)
    {
        var rng = new System.Random(seed);
        var pool = RandomPool(rng);
        var order = new[] { "fcfs", "sjf", "saf", "f1" }[rng.Next(4)];
        var policy = PolicyRegistry.Build(order, pool, backfill: conservative ? BackfillMode.Conservative : BackfillMode.Easy);
        var reused = new Scheduler(pool, policy);
        var stateA = new ClusterState(pool);
        var stateB = new ClusterState(pool);
        var running = new List<RunningJob>();
        var all = RandomJobs(rng, 40);
        var pending = new List<JobSpec>();
        var next = 0;
        for (var t = 0; t < 12; t++)
        {
            // Arrivals, and a completion on most cycles; some cycles change nothing but the clock.
            for (var k = rng.Next(0, 6); k > 0 && next < all.Count; k--)
            {
                pending.Add(all[next++]);
            }

            if (running.Count > 0 && rng.Next(3) > 0)
            {
                var done = running[rng.Next(running.Count)];
                running.Remove(done);
                stateA.Release(done.Allocation);
                stateB.Release(done.Allocation);
            }

            var input = new CycleInput(10 * t, pending.ToList(), running.ToList());
            var a = reused.RunCycle(input, stateA);
            var b = new Scheduler(pool, policy).RunCycle(input, stateB);
            var da = Describe(a);
            var db = Describe(b);
            if (da != db)
            {
                return false.Label($"cycle {t}: reused {da} != fresh {db}");
            }

            foreach (var p in a.Started)
            {
                pending.Remove(p.Job);
                reused.Forget(p.Job);
                running.Add(new RunningJob(p.Job, 10 * t, p.Allocation));
            }

        }

        return true.ToProperty();

        static string Describe(CycleResult r) =>
            string.Join(";", r.Started.Select(p => $"{p.Job.Id}@{p.Allocation.Group}:{string.Join(',', p.Allocation.Slices.Select(x => $"{x.Node}/{x.DeviceMask}/{x.GpuMilli}"))}"))
            + "|" + string.Join(";", r.Reservations.Select(x => $"{x.JobId}@{x.Start}-{x.End}:{string.Join(',', x.Allocation.Slices.Select(y => y.Node))}"))
            + "|" + string.Join(";", r.Waiting.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}"));
    }

    /// <summary>
    /// The scheduler's memory is an explicit input: a scheduler rebuilt every cycle (as the control plane rebuilds it
    /// when offers or providers change) decides exactly as one kept across cycles when it takes over
    /// <see cref="Scheduler.LastStarted"/>; without it the suanli order's continuation rule is lost and decisions differ.
    /// </summary>
    [Fact]
    public void RebuiltScheduler_WithTheMemory_DecidesAsAContinuingOne()
    {
        var differedWithout = 0;
        for (var seed = 0; seed < 150; seed++)
        {
            var (withMemory, withoutMemory) = Replay(seed);
            Assert.True(withMemory, $"seed {seed}: a rebuilt scheduler given the memory decided differently");
            differedWithout += withoutMemory ? 0 : 1;
        }

        Assert.True(differedWithout > 0, "the workloads never exercised the memory: the check would pass without it");

        static (bool WithMemory, bool WithoutMemory) Replay(int seed)
        {
            var rng = new System.Random(seed);
            var pool = RandomPool(rng);
            var policy = PolicyRegistry.Build("suanli", pool, backfill: BackfillMode.Easy);
            // Few job templates, so identical siblings (arrays, sweeps) are common.
            var templates = Enumerable.Range(0, 3).Select(_ => (Tenant: "t" + rng.Next(2), Task: new TaskResources(500L * rng.Next(1, 5), 256L * rng.Next(0, 5), 0, 0),
                Tasks: rng.Next(1, 4), Requested: rng.Next(10, 300))).ToList();
            var all = Enumerable.Range(0, 40).Select(i => templates[rng.Next(templates.Count)])
                .Select((x, i) => new JobSpec(i, x.Tenant, x.Task, x.Tasks, rng.Next(0, 100), x.Requested, 0)).ToList();
            var continuing = new Scheduler(pool, policy);
            var (stateA, stateB, stateC) = (new ClusterState(pool), new ClusterState(pool), new ClusterState(pool));
            var running = new List<RunningJob>();
            var pending = new List<JobSpec>();
            var (same, sameWithout, next) = (true, true, 0);
            for (var t = 0; t < 12; t++)
            {
                for (var k = rng.Next(1, 6); k > 0 && next < all.Count; k--)
                {
                    pending.Add(all[next++]);
                }

                if (running.Count > 0 && rng.Next(3) > 0)
                {
                    var done = running[rng.Next(running.Count)];
                    running.Remove(done);
                    stateA.Release(done.Allocation);
                    stateB.Release(done.Allocation);
                    stateC.Release(done.Allocation);
                }

                var input = new CycleInput(10 * t, pending.ToList(), running.ToList());
                var rebuilt = new Scheduler(pool, policy) { LastStarted = continuing.LastStarted };
                var forgetful = new Scheduler(pool, policy);
                var a = continuing.RunCycle(input, stateA);
                var da = Key(a);
                same &= da == Key(rebuilt.RunCycle(input, stateB));
                var c = forgetful.RunCycle(input, stateC);
                sameWithout &= da == Key(c);
                if (!sameWithout)
                {
                    // Keep the forgetful one on the continuing one's track so later cycles stay comparable.
                    stateC = new ClusterState(pool);
                    foreach (var r in running)
                    {
                        stateC.Allocate(r.Allocation);
                    }

                    foreach (var st in a.Started)
                    {
                        stateC.Allocate(st.Allocation);
                    }
                }

                foreach (var st in a.Started)
                {
                    pending.Remove(st.Job);
                    continuing.Forget(st.Job);
                    running.Add(new RunningJob(st.Job, 10 * t, st.Allocation));
                }
            }

            return (same, sameWithout);
        }

        static string Key(CycleResult r) => string.Join(";", r.Started.Select(p => $"{p.Job.Id}@{p.Allocation.Group}:{string.Join(',', p.Allocation.Slices.Select(x => x.Node))}"));
    }
}
