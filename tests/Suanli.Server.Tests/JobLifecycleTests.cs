using Suanli.Server.Storage;

namespace Suanli.Server.Tests;

/// <summary>The job lifecycle's rules as the pure function they are: every way an attempt ends, and the transition it makes.</summary>
public sealed class JobLifecycleTests
{
    private const long Now = 1_800_000_000_000;

    private static JobRecord Job(string state = JobStates.Running, int attempt = 1, int max = 3) =>
        new(7, 1, "j", "{}", state, attempt, max, 1, Now - 60_000, 2, "g", 4, "{}", state == JobStates.Leased ? null : Now - 30_000, null, null, null);

    private static UsageRecord Used(long ms) => new(7, 1, 1, 2, "g", null, 0, 0, 1000, 64, Now - ms, Now);

    private static AttemptEnd End(string state, int? exit = null, long ms = 30_000) => new(state, exit, null, Now, Used(ms), StartFilledIn: false);

    public static TheoryData<string, string, int?, bool, bool, int, string, bool, bool, bool> Cases => new()
    {
        // name, state, exit, retries failures, told to stop, attempt → next state, requeue, attempt given back, charged
        { "success ends the job", JobStates.Succeeded, 0, true, false, 1, JobStates.Succeeded, false, false, true },
        { "a failure with attempts left is retried", JobStates.Failed, 1, true, false, 1, JobStates.Queued, true, false, true },
        { "a failure on the last attempt ends the job", JobStates.Failed, 1, true, false, 3, JobStates.Failed, false, false, true },
        { "a failure without the retry policy ends the job", JobStates.Failed, 1, false, false, 1, JobStates.Failed, false, false, true },
        { "a preempted job is requeued, its attempt given back", JobStates.Failed, 143, false, true, 3, JobStates.Queued, true, true, true },
        { "a job that succeeds during its notice is done", JobStates.Succeeded, 0, false, true, 1, JobStates.Succeeded, false, false, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void AnAttemptThatEnded_MakesTheTransitionItsRulesSay(string name, string state, int? exit, bool retryOnFailure, bool told, int attempt,
        string next, bool requeue, bool given, bool charged)
    {
        var t = JobLifecycle.Ended(Job(attempt: attempt), End(state, exit), new AttemptContext(retryOnFailure, told ? (Now, "preempted by job 9") : null), 500, TimeSpan.FromSeconds(30));
        Assert.True((next, requeue, given, !t.Settle!.Void) == (t.To, t.Requeue, t.GrantAttempt, charged), name);
        Assert.Equal([JobStates.Leased, JobStates.Running], t.From);
        Assert.Equal(requeue ? null : Now, t.EndedMs);
        Assert.Equal(30_000, t.Settle.MeteredMs);
        Assert.Equal(state == JobStates.Failed && !requeue ? "exit 1" : null, t.Reason);
    }

    [Fact]
    public void APreemptionWithoutNotice_IsNotCharged_AndNothingMetered_IsVoided()
    {
        var t = JobLifecycle.Ended(Job(), End(JobStates.Failed, 143), new AttemptContext(false, (Now, "outbid")), 500, TimeSpan.Zero);
        Assert.True(t.Settle!.Void);
        Assert.Contains("preempted after notice: outbid", t.Message, StringComparison.Ordinal);
        var none = JobLifecycle.Ended(Job(), End(JobStates.Succeeded, 0) with { Usage = null }, new AttemptContext(false, null), 500, TimeSpan.Zero);
        Assert.True(none.Settle!.Void);
        Assert.EndsWith("nothing metered", none.Settle.Note, StringComparison.Ordinal);
    }

    [Fact]
    public void AnInterruptedAttempt_IsRequeuedUncharged_WithItsAttemptGivenBack_AndACancelledJobsProcessIsCharged()
    {
        var back = JobLifecycle.Interrupted(Job(), End(AgentStates.Interrupted), 500);
        Assert.Equal((JobStates.Queued, true, true, true), (back.To, back.Requeue, back.GrantAttempt, back.Settle!.Void));
        var stopped = JobLifecycle.CancelledProcessEnded(Job(JobStates.Cancelled), End(JobStates.Failed, 137), 500);
        Assert.Equal([JobStates.Cancelled], stopped.From);
        Assert.Equal((JobStates.Cancelled, false), (stopped.To, stopped.Settle!.Void));
        Assert.Equal("process stopped (exit 137)", stopped.Message);
    }

    [Fact]
    public void ALostProvider_RequeuesANeverStartedJobWhateverItsPolicy_RetriesARunningOne_AndNeverCharges()
    {
        var leased = JobLifecycle.Lost(Job(JobStates.Leased, attempt: 3, max: 3), "no heartbeat", null, Now, 500)!;
        Assert.Equal((JobStates.Queued, true, true), (leased.To, leased.Requeue, leased.GrantAttempt));
        var running = JobLifecycle.Lost(Job(attempt: 1), "no heartbeat", Used(5), Now, 500)!;
        Assert.Equal((JobStates.Queued, true, false), (running.To, running.Requeue, running.GrantAttempt));
        var last = JobLifecycle.Lost(Job(attempt: 3), "no heartbeat", Used(5), Now, 500)!;
        Assert.Equal((JobStates.Lost, false, Now, "provider lost"), (last.To, last.Requeue, last.EndedMs, last.Reason));
        Assert.All(new[] { leased, running, last }, t => Assert.True(t.Settle!.Void));
        Assert.Null(JobLifecycle.Lost(Job(JobStates.Queued), "x", null, Now, 500));
    }

    [Theory]
    [InlineData("no observation: receipt", null, 100L, 1000L, 1000L)]
    [InlineData("before the lease: the lease", 50L, 100L, 1000L, 100L)]
    [InlineData("after receipt: receipt", 2000L, 100L, 1000L, 1000L)]
    [InlineData("in between: as observed", 400L, 100L, 1000L, 400L)]
    [InlineData("lease unknown: receipt bounds it", 400L, null, 1000L, 1000L)]
    public void AnObservedStart_IsBoundedByTheLeaseAndByReceipt(string name, long? observed, long? leased, long now, long expected) =>
        Assert.True(expected == JobLifecycle.BoundedStart(observed, leased, now), name);

    [Theory]
    [InlineData("no observation: receipt", null, 100L, 1000L, 1000L)]
    [InlineData("before its start: the start", 50L, 100L, 1000L, 100L)]
    [InlineData("after receipt: receipt", 5000L, 100L, 1000L, 1000L)]
    [InlineData("in between: as observed", 700L, 100L, 1000L, 700L)]
    [InlineData("a start after receipt cannot invert the bounds", 700L, 2000L, 1000L, 1000L)]
    public void AnObservedEnd_IsBoundedByTheStartAndByReceipt(string name, long? observed, long? started, long now, long expected) =>
        Assert.True(expected == JobLifecycle.BoundedEnd(observed, started, now), name);
}
