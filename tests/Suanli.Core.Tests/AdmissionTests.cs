using Suanli.Core.Domain;
using Suanli.Core.Market;
using Suanli.Core.Scheduling;
using static Suanli.Core.Tests.Fixtures;

namespace Suanli.Core.Tests;

/// <summary>Admission (dependencies, array throttles, spot) and the funds check during placement.</summary>
public sealed class AdmissionTests
{
    private static AdmissionInput Fates(params (long Id, JobFate Fate)[] fates)
    {
        var map = fates.ToDictionary(f => f.Id, f => f.Fate);
        return new AdmissionInput(id => map.GetValueOrDefault(id, JobFate.Missing));
    }

    [Fact]
    public void Dependencies_HoldWhilePending_AdmitWhenTheyHold_DoomWhenTheyNeverCan()
    {
        JobSpec Dep(long id, DependencyKind kind, long on) => Job(id, 1, 0, 60) with { Dependencies = [new JobDependency(kind, on)] };
        var queued = new[]
        {
            Dep(10, DependencyKind.AfterOk, 1),    // 1 running: held
            Dep(11, DependencyKind.AfterOk, 2),    // 2 succeeded: admitted
            Dep(12, DependencyKind.AfterOk, 3),    // 3 failed: doomed
            Dep(13, DependencyKind.AfterNotOk, 3), // admitted
            Dep(14, DependencyKind.AfterNotOk, 2), // doomed
            Dep(15, DependencyKind.AfterAny, 3),   // admitted
            Dep(16, DependencyKind.AfterAny, 99),  // no such job: doomed
            Job(17, 1, 0, 60) with { Dependencies = [new(DependencyKind.AfterOk, 1), new(DependencyKind.AfterOk, 3)] }, // one pending, one impossible: doomed
        };
        var r = Admission.Admit(queued, Fates((1, JobFate.Pending), (2, JobFate.Succeeded), (3, JobFate.Unsuccessful)));

        Assert.Equal([11, 13, 15], r.Admitted.Select(j => j.Id));
        Assert.Equal(WaitKind.Dependencies, r.Held[10].Kind);
        Assert.Contains("afterok:1", r.Held[10].Detail, StringComparison.Ordinal);
        Assert.Equal([12, 14, 16, 17], r.Doomed.Select(d => d.Job.Id));
        Assert.Contains("does not exist", r.Doomed.Single(d => d.Job.Id == 16).Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void ArrayThrottle_OffersOnlyWhatTheLimitLeaves_LowestIdsFirst()
    {
        var elements = Enumerable.Range(0, 6).Select(i => Job(100 - i, 1, 0, 60) with { Array = new ArrayMembership(7, 3) }).ToList();
        var other = Job(5, 1, 0, 60);
        var active = new Dictionary<long, int> { [7] = 1 };
        var r = Admission.Admit([.. elements, other], new AdmissionInput(_ => JobFate.Missing, active));

        Assert.Equal([5, 95, 96], r.Admitted.Select(j => j.Id));
        Assert.All(new long[] { 97, 98, 99, 100 }, id => Assert.Equal(WaitKind.ArrayLimit, r.Held[id].Kind));
    }

    [Fact]
    public void Spot_OnlyTheAuctionsWinnersAreAdmitted_AndOnlyWhenTheCallerRunsAnAuction()
    {
        var spot = new[] { Job(1, 1, 0, 60) with { Tier = Tiers.Interruptible }, Job(2, 1, 0, 60) with { Tier = Tiers.Interruptible }, Job(3, 1, 0, 60) };
        var r = Admission.Admit(spot, new AdmissionInput(_ => JobFate.Missing, SpotAdmitted: new HashSet<long> { 2 }));
        Assert.Equal([2, 3], r.Admitted.Select(j => j.Id));
        Assert.Equal(WaitKind.SpotNotAdmitted, r.Held[1].Kind);

        Assert.Equal(3, Admission.Admit(spot, new AdmissionInput(_ => JobFate.Missing)).Admitted.Count);
    }

    private static Pool Priced(long cheapFen, long dearFen) => new(
        [new Provider("p", "r", "s")],
        [
            new NodeGroup("dear", "p", new NodeShape(4000, 4096), 1, dearFen * 4 / 100m, new MarketTerms(Tiers.OnDemand, PriceFen: dearFen, UnitsPerNode: 4)),
            new NodeGroup("cheap", "p", new NodeShape(4000, 4096), 1, cheapFen * 4 / 100m, new MarketTerms(Tiers.OnDemand, PriceFen: cheapFen, UnitsPerNode: 4)),
        ]);

    [Fact]
    public void Funds_AJobGoesOnlyWhereItsTenantCanCoverTheHold_AndTheHoldsOfACycleAddUp()
    {
        // One core for an hour: 100 fen on "cheap", 300 on "dear". The tenant has 350 fen.
        var pool = Priced(100, 300);
        var s = new Scheduler(pool, PolicyRegistry.Build("fcfs", pool, "price"));
        var state = new ClusterState(pool);
        var jobs = new[] { Job(1, 1, 0, 3600, tenant: "a"), Job(2, 1, 0, 3600, tenant: "a"), Job(3, 1, 0, 3600, tenant: "a"), Job(4, 1, 0, 3600, tenant: "a") };
        Assert.Equal(100, Escrow.HoldFen(jobs[0], pool.Groups[1]));
        var r = s.RunCycle(new CycleInput(0, jobs, [], Funds: new Dictionary<string, long> { ["a"] = 350 }), state);

        var held = r.Started.Sum(p => Escrow.HoldFen(p.Job, pool.Groups[p.Allocation.Group]));
        Assert.True(held <= 350, $"held {held}");
        Assert.Equal(3, r.Started.Count); // 100 + 100 + 100 on the cheap group; a 4th cheap one (or a dear one) would exceed 350
        Assert.All(r.Started, p => Assert.Equal(1, p.Allocation.Group));
        Assert.Equal(WaitKind.InsufficientFunds, r.Waiting[4].Kind);
        Assert.Equal(100, r.Waiting[4].At);
        Assert.Equal(50, r.Waiting[4].BlockingJob);
        Assert.DoesNotContain(r.Reservations, x => x.JobId == 4);
    }

    [Fact]
    public void Funds_ADearerGroupIsUsedWhenTheCheapOneIsFull_IfTheTenantCanPay()
    {
        var pool = Priced(100, 300);
        var s = new Scheduler(pool, PolicyRegistry.Build("fcfs", pool, "price"));
        var state = new ClusterState(pool);
        var big = Job(1, 1, 0, 3600, cores: 4, tenant: "b"); // fills "cheap" (400) or "dear" (1200)
        var r = s.RunCycle(new CycleInput(0, [big, Job(2, 1, 0, 3600, cores: 4, tenant: "b")], [], Funds: new Dictionary<string, long> { ["b"] = 1600 }), state);
        Assert.Equal(2, r.Started.Count);
        Assert.Equal(1600, r.Started.Sum(p => Escrow.HoldFen(p.Job, pool.Groups[p.Allocation.Group])));

        // An unlisted tenant is not checked; unpriced groups hold nothing.
        var free = Pool.Uniform(1, new NodeShape(4000, 4096));
        Assert.Equal(0, Escrow.HoldFen(big, free.Groups[0]));
        var s2 = new Scheduler(free, PolicyRegistry.Build("fcfs", free, "bestfit"));
        Assert.Single(s2.RunCycle(new CycleInput(0, [big], [], Funds: new Dictionary<string, long> { ["b"] = 0 }), new ClusterState(free)).Started);
    }

    [Fact]
    public void Funds_AHoldBeyondWhatFenCanCount_SaturatesAndWaits_InsteadOfThrowing()
    {
        var pool = Priced(100_000_000_000, 100_000_000_000);
        var s = new Scheduler(pool, PolicyRegistry.Build("fcfs", pool, "price"));
        var huge = Job(1, 1, 0, 366L * 86_400, cores: 4, tenant: "a") with { Tasks = 1 };
        Assert.True(Escrow.HoldFen(huge with { RequestedSeconds = long.MaxValue / 2 }, pool.Groups[0]) == long.MaxValue);
        var r = s.RunCycle(new CycleInput(0, [huge with { RequestedSeconds = long.MaxValue / 2 }], [], Funds: new Dictionary<string, long> { ["a"] = long.MaxValue - 1 }), new ClusterState(pool));
        Assert.Empty(r.Started);
        Assert.Equal(WaitKind.InsufficientFunds, r.Waiting[1].Kind);
    }
}
