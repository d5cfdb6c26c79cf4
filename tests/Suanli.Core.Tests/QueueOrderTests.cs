using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using static Suanli.Core.Tests.Fixtures;

namespace Suanli.Core.Tests;

public class QueueOrderTests
{
    private static readonly JobSpec Big = Job(1, tasks: 8, submit: 100, req: 1000);   // area 8000
    private static readonly JobSpec Small = Job(2, tasks: 1, submit: 200, req: 3000); // area 3000
    private static readonly JobSpec Short = Job(3, tasks: 4, submit: 300, req: 10);    // area 40

    [Theory]
    [InlineData("fcfs", new long[] { 1, 2, 3 })]
    [InlineData("sjf", new long[] { 3, 1, 2 })]
    [InlineData("saf", new long[] { 3, 2, 1 })]
    public void Order_HandCheckedQueue_MatchesPolicy(string policy, long[] expected)
    {
        var pool = Cpus(8);
        var s = new Scheduler(pool, PolicyRegistry.Build(policy, pool));
        var ordered = s.Order([Small, Short, Big], new QueueContext(1000, new Dictionary<string, double>()));
        Assert.Equal(expected, ordered.Select(j => j.Id));
    }

    [Fact]
    public void F1_Key_IsLogRequestTimesProcsPlus870LogSubmit()
    {
        var key = new F1Order().Key(Job(1, 4, submit: 1000, req: 100), default);
        Assert.Equal((Math.Log10(100) * 4) + (870 * Math.Log10(1000)), key, 9);
        Assert.Equal(870 * Math.Log10(0.1) + Math.Log10(0.1), new F1Order().Key(Job(1, 1, 0, 0), default), 9);
    }

    [Fact]
    public void Order_HigherPriorityClass_GoesFirstWhateverTheKey()
    {
        var pool = Cpus(8);
        var s = new Scheduler(pool, PolicyRegistry.Build("fcfs", pool));
        var urgent = Job(9, 1, submit: 999, req: 10, priority: 5);
        var ordered = s.Order([Big, urgent], new QueueContext(1000, new Dictionary<string, double>()));
        Assert.Equal(9, ordered[0].Id);
    }

    [Fact]
    public void FairShare_TenantWithLessDecayedUsage_GoesFirst()
    {
        var pool = Cpus(4);
        var s = new Scheduler(pool, PolicyRegistry.Build("fair-share", pool));
        var ledger = new FairShareLedger(halfLifeSeconds: 100);
        ledger.Charge("heavy", 1000, at: 0);
        ledger.Charge("light", 10, at: 0);
        var a = Job(1, 1, 0, 10, tenant: "heavy");
        var b = Job(2, 1, 50, 10, tenant: "light");
        var result = s.RunCycle(new CycleInput(100, [a, b], [], FairShare: ledger), new ClusterState(pool));
        Assert.Equal(2, result.Started[0].Job.Id);
        Assert.Equal(500, ledger.Usage("heavy", 100), 6);
    }

    [Fact]
    public void FairShare_Weight_DividesUsage()
    {
        var pool = Cpus(4);
        var s = new Scheduler(pool, PolicyRegistry.Build("fair-share", pool));
        var ledger = new FairShareLedger();
        ledger.Charge("a", 100, 0);
        ledger.Charge("b", 150, 0);
        var tenants = new Dictionary<string, Tenant> { ["a"] = new("a", ["finance"], 1.0), ["b"] = new("b", ["education"], 3.0) };
        var shares = s.TenantShares(new CycleInput(0, [Job(1, 1, 0, 1, tenant: "a"), Job(2, 1, 0, 1, tenant: "b")], [], tenants, ledger));
        Assert.Equal(100, shares["a"], 6);
        Assert.Equal(50, shares["b"], 6);
    }

    [FsCheck.Xunit.Property(MaxTest = 200)]
    public bool FairShare_ChargesInAnyOrder_GiveTheSameDecayedUsage(int seed)
    {
        // A restart replays history oldest first, but live charges may already be in: order must not matter.
        var rng = new System.Random(seed);
        var charges = Enumerable.Range(0, rng.Next(1, 12)).Select(_ => (Amount: rng.Next(0, 1000) / 10.0, At: (long)rng.Next(0, 2000))).ToList();
        var inOrder = new FairShareLedger(halfLifeSeconds: 300);
        foreach (var (amount, at) in charges.OrderBy(c => c.At))
        {
            inOrder.Charge("t", amount, at);
        }

        var shuffled = new FairShareLedger(halfLifeSeconds: 300);
        foreach (var (amount, at) in charges.OrderBy(_ => rng.Next()))
        {
            shuffled.Charge("t", amount, at);
        }

        var expected = charges.Sum(c => c.Amount * Math.Pow(0.5, (2500 - c.At) / 300.0));
        return Math.Abs(inOrder.Usage("t", 2500) - expected) < 1e-9 * Math.Max(1, expected)
            && Math.Abs(shuffled.Usage("t", 2500) - expected) < 1e-9 * Math.Max(1, expected);
    }

    [Fact]
    public void Suanli_IdenticalSiblingOfTheJobStartedLast_MovesUp_OthersDoNot()
    {
        var order = new SuanliOrder();
        var last = new JobSpec(1, "u30", new TaskResources(1000, 0), 115, 0, 64800);
        var sibling = last with { Id = 2, SubmitTime = 5 };
        var ctx = new QueueContext(10, new Dictionary<string, double>());
        var withLast = ctx with { LastStarted = last };
        Assert.Equal(order.Key(sibling, ctx) - SuanliOrder.ContinuationBonus, order.Key(sibling, withLast), 12);

        // Not siblings: another tenant, another width, another request, another task shape, or an unknown submitter.
        foreach (var other in new[]
        {
            sibling with { Tenant = "u31" }, sibling with { Tasks = 114 }, sibling with { RequestedSeconds = 64801 },
            sibling with { Task = new TaskResources(1000, 0, 1, 1000) }, sibling with { Tenant = Tenant.Unknown },
        })
        {
            Assert.Equal(order.Key(other, ctx), order.Key(other, withLast with { LastStarted = other.Tenant == Tenant.Unknown ? last with { Tenant = Tenant.Unknown } : last }), 12);
        }

        // Models are compared by content, not by list identity.
        var gpu = new JobSpec(3, "t", new TaskResources(1000, 0, 1, 1000, ["A100"]), 1, 0, 60);
        Assert.True(SuanliOrder.IsSibling(gpu with { Id = 4, Task = new TaskResources(1000, 0, 1, 1000, ["A100"]) }, gpu));
    }
}
