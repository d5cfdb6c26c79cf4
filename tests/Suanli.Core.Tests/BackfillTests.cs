using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using static Suanli.Core.Tests.Fixtures;

namespace Suanli.Core.Tests;

public class BackfillTests
{
    // 4 nodes; a running job holds 3 of them until t=100 (requested). The head needs 4 nodes: reserved at t=100.
    private static (Scheduler, ClusterState, RunningJob) Busy(BackfillMode mode)
    {
        var pool = Cpus(4);
        var s = new Scheduler(pool, PolicyRegistry.Build("fcfs", pool, backfill: mode));
        var state = new ClusterState(pool);
        var r = Start(s, state, Job(100, 3, 0, 100), 0);
        return (s, state, r);
    }

    [Fact]
    public void Easy_ShortJob_BackfillsBeforeReservation()
    {
        var (s, state, r) = Busy(BackfillMode.Easy);
        var head = Job(1, 4, 10, 50);
        var shortJob = Job(2, 1, 20, 80); // ends at 90 < 100
        var res = s.RunCycle(new CycleInput(10, [head, shortJob], [r]), state);
        Assert.Equal([2L], res.Started.Select(p => p.Job.Id));
        Assert.Equal(new WaitReason(WaitKind.Reserved, At: 100), res.Waiting[1]);
    }

    [Fact]
    public void Easy_LongJob_WouldDelayHead_Waits()
    {
        var (s, state, r) = Busy(BackfillMode.Easy);
        var head = Job(1, 4, 10, 50);
        var longJob = Job(2, 1, 20, 500);
        var res = s.RunCycle(new CycleInput(10, [head, longJob], [r]), state);
        Assert.Empty(res.Started);
        Assert.Equal(WaitKind.WouldDelayReservation, res.Waiting[2].Kind);
        Assert.Equal(1, res.Waiting[2].BlockingJob);
    }

    [Fact]
    public void Easy_LongJobOnNodeOutsideReservation_Backfills()
    {
        // The head needs 2 nodes at t=100 (nodes 0 and 1); node 3 is free now and not reserved, so a long job may use it.
        var (s, state, r) = Busy(BackfillMode.Easy);
        var res = s.RunCycle(new CycleInput(20, [Job(1, 2, 10, 50), Job(2, 1, 20, 500)], [r]), state);
        Assert.Equal([2L], res.Started.Select(p => p.Job.Id));
        Assert.Equal(100, res.Waiting[1].At);
        Assert.Equal(3, res.Started[0].Allocation.Slices[0].Node);
    }

    [Fact]
    public void None_BlockedHead_BlocksEverythingBehind()
    {
        var (s, state, r) = Busy(BackfillMode.None);
        var res = s.RunCycle(new CycleInput(10, [Job(1, 4, 10, 50), Job(2, 1, 20, 1)], [r]), state);
        Assert.Empty(res.Started);
        Assert.Equal(new WaitReason(WaitKind.BehindBlockedJob, 1), res.Waiting[2]);
    }

    [Fact]
    public void Conservative_SecondBlockedJob_AlsoGetsReservation()
    {
        var (s, state, r) = Busy(BackfillMode.Conservative);
        var res = s.RunCycle(new CycleInput(10, [Job(1, 4, 10, 50), Job(2, 4, 11, 50), Job(3, 1, 12, 70)], [r]), state);
        Assert.Equal(100, res.Waiting[1].At);
        Assert.Equal(150, res.Waiting[2].At);
        Assert.Equal([3L], res.Started.Select(p => p.Job.Id)); // ends at 82, before both reservations
    }

    [Fact]
    public void Gang_TooBigForFreeNodes_StartsNoTask()
    {
        var (s, state, r) = Busy(BackfillMode.Easy);
        var before = state.TotalFreeMilliCpu;
        var res = s.RunCycle(new CycleInput(10, [Job(1, 2, 10, 5)], [r]), state);
        Assert.Empty(res.Started);
        Assert.Equal(before, state.TotalFreeMilliCpu);
    }

    [Fact]
    public void Infeasible_JobLargerThanPool_ExplainsShape()
    {
        var pool = Cpus(4);
        var s = new Scheduler(pool, PolicyRegistry.Build("fcfs", pool));
        var job = Job(1, 5, 0, 10);
        var res = s.RunCycle(new CycleInput(0, [job], []), new ClusterState(pool));
        Assert.Equal(WaitKind.Infeasible, res.Waiting[1].Kind);
        Assert.Contains(s.Explain(job, new ClusterState(pool)), l => l.Contains("gang of 5 tasks", StringComparison.Ordinal));
    }

    [Fact]
    public void Preemption_HigherClass_EvictsLowerClass()
    {
        var pool = Cpus(2);
        var policy = PolicyRegistry.Build("fcfs", pool) with { Preemption = true };
        var s = new Scheduler(pool, policy);
        var state = new ClusterState(pool);
        var low = Start(s, state, Job(1, 2, 0, 1000, priority: 0), 0);
        var res = s.RunCycle(new CycleInput(10, [Job(2, 1, 5, 10, priority: 5)], [low]), state);
        Assert.Equal([2L], res.Started.Select(p => p.Job.Id));
        Assert.Equal([1L], res.Preempted.Select(p => p.Job.Id));
    }

    [Fact]
    public void Quota_TenantOverQuota_Waits()
    {
        var pool = Cpus(4);
        var s = new Scheduler(pool, PolicyRegistry.Build("fcfs", pool));
        var tenants = new Dictionary<string, Tenant> { ["t"] = new("t", ["industry"], QuotaMilliCpu: 2000) };
        var res = s.RunCycle(new CycleInput(0, [Job(1, 2, 0, 10), Job(2, 1, 1, 10)], [], tenants), new ClusterState(pool));
        Assert.Equal([1L], res.Started.Select(p => p.Job.Id));
        Assert.Equal(WaitKind.QuotaExceeded, res.Waiting[2].Kind);
    }
}
