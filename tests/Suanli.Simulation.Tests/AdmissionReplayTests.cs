using Suanli.Core.Domain;
using Suanli.Core.Market;
using Suanli.Core.Scheduling;
using Suanli.Simulation.Engine;
using Suanli.Simulation.Traces;

namespace Suanli.Simulation.Tests;

/// <summary>The simulator replays the core's admission rules and budgets, as the control plane runs them.</summary>
public sealed class AdmissionReplayTests
{
    [Fact]
    public void SwfPrecedingJob_IsADependency_OnlyWhenAskedFor()
    {
        // Job 2 follows job 1 (field 17); the 4-node machine has room for both at once.
        var path = Path.Combine(Path.GetTempPath(), $"suanli-deps-{Guid.NewGuid():N}.swf");
        File.WriteAllText(path, """
            ; MaxNodes: 4
            ; MaxProcs: 4
            1 0 0 100 1 -1 -1 1 200 -1 1 1 1 -1 1 -1 -1 0
            2 10 0 50 1 -1 -1 1 200 -1 1 1 1 -1 1 -1 1 5
            3 20 0 50 1 -1 -1 1 200 -1 1 1 1 -1 1 -1 77 5
            """);
        try
        {
            var plain = SwfReader.Read(path);
            var pool = plain.DefaultPool!;
            var free = new Simulator(pool, PolicyRegistry.Build("fcfs", pool)).Run(plain.Jobs);
            Assert.Equal(10, free.Jobs.Single(j => j.Id == 2).Start);
            Assert.Equal(3, free.Jobs.Count);

            var deps = SwfReader.Read(path, dependencies: true);
            var held = new Simulator(pool, PolicyRegistry.Build("fcfs", pool)).Run(deps.Jobs);
            Assert.Equal(100, held.Jobs.Single(j => j.Id == 2).Start);
            var doomed = Assert.Single(held.Skipped);
            Assert.Equal(3, doomed.Id);
            Assert.Contains("job 77 does not exist", doomed.Reason, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void ArrayThrottle_RunsAtMostItsLimit_AndBudgets_ChargeWhatRan()
    {
        var shape = new NodeShape(1000, 0);
        var pool = new Pool([new Provider("p", "r", "s")], [new NodeGroup("g", "p", shape, 8, 1m, new MarketTerms(Tiers.OnDemand, PriceFen: 3600, UnitsPerNode: 1))]);

        // Six elements of one array limited to two at once, on eight free nodes.
        var array = Enumerable.Range(1, 6).Select(i => new TraceJob(new JobSpec(i, "a", new TaskResources(1000, 0), 1, 0, 100, Array: new ArrayMembership(1, 2)), 100)).ToList();
        var run = new Simulator(pool, PolicyRegistry.Build("fcfs", pool)).Run(array);
        Assert.Equal([0, 0, 100, 100, 200, 200], run.Jobs.OrderBy(j => j.Id).Select(j => j.Start));

        // 3600 fen per core-hour = 1 fen per core-second: a 100 s limit holds 100 fen, a 40 s run is charged 40.
        // Tenant b has 150 fen: one hold at a time; each run's refund (60 fen) lets the next start until 150 − 2 × 40 = 70
        // fen is left, which cannot cover a third hold.
        var jobs = Enumerable.Range(1, 3).Select(i => new TraceJob(new JobSpec(i, "b", new TaskResources(1000, 0), 1, 0, 100), 40)).ToList();
        var funded = new Simulator(pool, PolicyRegistry.Build("fcfs", pool), funds: new Dictionary<string, long> { ["b"] = 150 }).Run(jobs);
        Assert.Equal([0, 40], funded.Jobs.OrderBy(j => j.Id).Select(j => j.Start));
        Assert.Equal(3, Assert.Single(funded.Skipped, s => s.Reason == "never started").Id);
        Assert.Equal(100, Escrow.HoldFen(jobs[0].Spec, pool.Groups[0]));
        Assert.Equal(40, Escrow.CostFen(jobs[0].Spec, pool.Groups[0], 40_000));
    }
}
