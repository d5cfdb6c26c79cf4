using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using Suanli.Core.Units;

namespace Suanli.Core.Tests;

public class PlacementTests
{
    private static Pool TwoSites() => new(
        [new Provider("east", "shanghai", "sh1"), new Provider("west", "guizhou", "gy1")],
        [
            new NodeGroup("a100", "east", new NodeShape(64000, 512000, "A100", 8), 2, 200m),
            new NodeGroup("910b", "west", new NodeShape(64000, 512000, "Ascend910B", 8), 2, 120m),
        ],
        [("shanghai", "guizhou", 30)]);

    private static JobSpec GpuJob(int gpus = 8, JobConstraints? where = null, decimal? budget = null, IReadOnlyList<string>? models = null) =>
        new(1, "t", new TaskResources(8000, 64000, gpus, 1000, models), 1, 0, 3600, Constraints: where, Budget: budget);

    [Theory]
    [InlineData("price", "910b")]
    [InlineData("latency", "a100")]
    public void Placement_Scorer_PicksExpectedGroup(string placement, string expected)
    {
        var pool = TwoSites();
        var s = new Scheduler(pool, PolicyRegistry.Build("fcfs", pool, placement));
        var job = GpuJob(where: new JobConstraints(UserRegion: "shanghai"));
        var res = s.RunCycle(new CycleInput(0, [job], []), new ClusterState(pool));
        Assert.Equal(expected, pool.Groups[res.Started[0].Allocation.Group].Id);
    }

    [Theory]
    [InlineData("model constraint", "A100", null, null, "910b", "task allows A100")]
    [InlineData("latency bound", null, 10, null, "910b", "is 30 ms")]
    [InlineData("budget cap", null, null, "150", "a100", "exceeds budget")]
    public void Filter_RejectsGroup_WithReason(string name, string? model, int? maxLatency, string? budget, string rejected, string reason)
    {
        _ = name;
        var pool = TwoSites();
        var s = new Scheduler(pool, PolicyRegistry.Build("fcfs", pool));
        var job = GpuJob(where: new JobConstraints(UserRegion: "shanghai", MaxLatencyMs: maxLatency),
            budget: budget is null ? null : decimal.Parse(budget, System.Globalization.CultureInfo.InvariantCulture),
            models: model is null ? null : [model]);
        var lines = s.Explain(job, new ClusterState(pool));
        Assert.Contains(lines, l => l.Contains(rejected, StringComparison.Ordinal) && l.Contains(reason, StringComparison.Ordinal));
        Assert.Single(s.FeasibleGroups(job));
    }

    [Fact]
    public void SharingTask_BestFit_TakesFullestCard()
    {
        var pool = new Pool([new Provider("p", "r", "s")], [new NodeGroup("g", "p", new NodeShape(64000, 1000, "T4", 2, GpuSharing: true), 1)]);
        var state = new ClusterState(pool);
        var max = MaxSpec.Of(pool);
        var first = new JobSpec(1, "t", new TaskResources(1000, 0, 1, 600), 1, 0, 1);
        state.Allocate(Scheduler.PlaceInGroup(first, 0, state, new BestFitNodeScorer(max))!);
        var second = Scheduler.PlaceInGroup(new JobSpec(2, "t", new TaskResources(1000, 0, 1, 300), 1, 0, 1), 0, state, new BestFitNodeScorer(max))!;
        Assert.Equal(1UL, second.Slices[0].DeviceMask); // card 0 has 400 free: the tightest fit
    }

    [Fact]
    public void Fgd_Fragmentation_HandComputed()
    {
        // One typical kind: 1 card of 500 milli with 1 core. A node with cards at 300 and 1000 free:
        // the 300 card cannot host the kind, so 300 milli is fragment (q2); frequency 1.
        var fgd = new FgdNodeScorer([new TypicalTask(1000, 500, 1, "", 1.0)]);
        Assert.Equal(300, fgd.Fragmentation(8000, [300, 1000], "T4"), 9);
        Assert.Equal(1300, fgd.Fragmentation(0, [300, 1000], "T4"), 9); // no CPU: everything is fragment
    }

    [Fact]
    public void Suanli_CpuOnlyTask_TakesTheTiedNodeWithFewestFreeCards_CardTasksScoreAsFgd()
    {
        // Three equal nodes of 2 cards: node 0 has both cards free, node 1 one, node 2 none.
        var pool = new Pool([new Provider("p", "r", "s")], [new NodeGroup("g", "p", new NodeShape(64000, 64000, "T4", 2, GpuSharing: true), 3)]);
        var state = new ClusterState(pool);
        var max = MaxSpec.Of(pool);
        void Take(int node, int cards)
        {
            var slice = NodeFit.SliceFor(state.Node(0, node), new TaskResources(1000, 0, cards, 1000), new BestFitNodeScorer(max))!.Value;
            state.Allocate(new Allocation(0, [slice]));
        }

        Take(1, 1);
        Take(2, 2);
        TypicalTask[] typical = [new TypicalTask(1000, 1000, 1, "", 0.7), new TypicalTask(2000, 0, 0, "", 0.3)];
        var fgd = new FgdNodeScorer(typical);
        var suanli = new SuanliNodeScorer(typical);
        var cpuOnly = new JobSpec(1, "t", new TaskResources(4000, 0), 1, 0, 1);

        // FGD scores the three nodes alike for a CPU-only task (no card changes) and node order decides: node 0.
        Assert.Equal(0, Scheduler.PlaceInGroup(cpuOnly, 0, state, fgd)!.Slices[0].Node);
        Assert.Equal(fgd.Score(state.Node(0, 0), cpuOnly.Task), fgd.Score(state.Node(0, 2), cpuOnly.Task));
        // Suanli keeps the CPU beside the free cards: node 2, whose cards are all taken.
        Assert.Equal(2, Scheduler.PlaceInGroup(cpuOnly, 0, state, suanli)!.Slices[0].Node);
        Assert.True(suanli.Score(state.Node(0, 1), cpuOnly.Task) > suanli.Score(state.Node(0, 0), cpuOnly.Task));
        Assert.Equal(Math.Floor(suanli.Score(state.Node(0, 2), cpuOnly.Task)), fgd.Score(state.Node(0, 2), cpuOnly.Task));

        // A card task is scored exactly as FGD scores it.
        var card = new TaskResources(1000, 0, 1, 500);
        for (var n = 0; n < 2; n++)
        {
            Assert.Equal(fgd.Score(state.Node(0, n), card), suanli.Score(state.Node(0, n), card));
            Assert.Equal(fgd.ChooseSharingDevice(state.Node(0, n), card), suanli.ChooseSharingDevice(state.Node(0, n), card));
        }
    }

    [Fact]
    public void TypicalTasks_KeepTheCommonShapesUpTo95Percent_ByShareOfTheKept()
    {
        // 10 tasks: 6 of A, 3 of B, 1 of C. 95 % of 10 = 9.5: A and B reach 9, C is needed to reach 10; with 80 %, A and B.
        var a = TypicalTask.KeyOf(new TaskResources(1000, 0, 1, 1000));
        var b = TypicalTask.KeyOf(new TaskResources(2000, 0, 1, 500, ["T4", "A10"]));
        var c = TypicalTask.KeyOf(new TaskResources(500, 0));
        Assert.Equal((2000L, 500, 1, "T4|A10"), b);
        var tasks = Enumerable.Repeat(a, 6).Concat(Enumerable.Repeat(b, 3)).Append(c).ToList();
        Assert.Equal(3, TypicalTask.Of(tasks).Count);
        var kept = TypicalTask.Of(tasks, 80);
        Assert.Equal([a, b], kept.Select(k => (k.MilliCpu, k.GpuMilli, k.GpuCount, k.GpuSpec)));
        Assert.Equal(6.0 / 9, kept[0].Frequency, 12);
        Assert.Empty(TypicalTask.Of(new Dictionary<(long, int, int, string), int> { [a] = 0 }));
    }

    [Fact]
    public void StandardUnits_A100HalfCardTwoHours()
    {
        var q = StandardUnits.Convert(new ResourceUsage(7200, 4000, 500, "A100"), AcceleratorCatalogue.BuiltIn);
        Assert.Equal(8m, q.CoreHours);
        Assert.Equal(1m, q.CardHours);
        Assert.Equal(312m, q.Fp16TflopsHours);
        Assert.Equal(19.5m, q.Fp32TflopsHours);
        Assert.Equal(9.7m, q.TflopsHours(Precision.Fp64));
    }

    [Fact]
    public void Catalogue_HasNvidiaAndAscend()
    {
        var c = AcceleratorCatalogue.BuiltIn;
        Assert.Equal(AcceleratorVendor.Huawei, c.Find("ascend910b")!.Vendor);
        Assert.True(c.Find("Ascend910B")!.Domestic);
        Assert.Equal(AcceleratorVendor.Nvidia, c.Find("H100")!.Vendor);
    }
}
