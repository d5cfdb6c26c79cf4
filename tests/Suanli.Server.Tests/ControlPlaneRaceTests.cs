using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using Suanli.Core.Market;
using Suanli.Server.Storage;

namespace Suanli.Server.Tests;

/// <summary>The control plane in-process over a real SQLite file, with the races of issue 13 made deterministic.</summary>
public sealed class ControlPlaneRaceTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "suanli-cp-" + Guid.NewGuid().ToString("N")[..10]);

    public ControlPlaneRaceTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    [Fact]
    public async Task ACancel_ThatWinsTheRaceAgainstTheFinalReport_StillMetersTheAttempt()
    {
        await using var store = SqliteStore.Open(Path.Combine(_dir, "suanli.db"));
        var cp = new ControlPlane(store, store, TimeProvider.System, new ServerMetrics(), new ControlPlaneOptions(), NullLogger<ControlPlane>.Instance);
        await cp.RecoverAsync();
        var t = await store.CreateTenantAsync("a", "research", 1, 1);
        cp.TenantCreated(t);
        var p = await store.CreateProviderAsync("p", "r", 1);
        cp.ProviderCreated(p);
        var reg = await cp.RegisterAsync(p.Id, "r", [new GroupOffer("g", 4000, 8192, null, 0, 1, null)]);
        var doc = JobDocument.Parse("""{"name":"j","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""", cp.Catalogue);
        var (job, _) = await cp.SubmitAsync(t.Id, doc, null);
        await cp.CycleAsync();
        Assert.Equal(JobStates.Leased, (await store.GetJobAsync(job.Id))!.State);
        await cp.ReportAsync(p.Id, reg.Epoch, job.Id, JobStates.Running, null, "started");
        await Task.Delay(30);

        // The cancel commits while the control plane's view of the job still says running: the race, made certain.
        var now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        await store.ApplyAsync(new Transition(job.Id, [JobStates.Running], JobStates.Cancelled, "cancelled by request") { AtMs = now, EndedMs = now, Reason = "cancelled" });
        var rec = await cp.ReportAsync(p.Id, reg.Epoch, job.Id, JobStates.Succeeded, 0, "exit 0");

        Assert.Equal(JobStates.Cancelled, rec.State);
        var usage = Assert.Single(await store.JobUsageAsync(job.Id));
        Assert.True(usage.EndedMs - usage.StartedMs >= 30, $"metered {usage.EndedMs - usage.StartedMs} ms");
        Assert.Contains(await store.EventsAsync(job.Id), e => e.Message.StartsWith("process stopped", StringComparison.Ordinal));
    }

    [Fact]
    public async Task AnAttempt_IsMeteredFromTheAgentsObservedTimes_BoundedByTheLeaseAndByReceipt()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));
        await using var store = SqliteStore.Open(Path.Combine(_dir, "suanli.db"));
        var cp = new ControlPlane(store, store, clock, new ServerMetrics(), new ControlPlaneOptions(), NullLogger<ControlPlane>.Instance);
        await cp.RecoverAsync();
        long Now() => clock.GetUtcNow().ToUnixTimeMilliseconds();
        var t = await store.CreateTenantAsync("a", "research", 1, Now());
        cp.TenantCreated(t);
        var p = await store.CreateProviderAsync("p", "r", Now());
        cp.ProviderCreated(p);
        var reg = await cp.RegisterAsync(p.Id, "r", [new GroupOffer("g", 4000, 8192, null, 0, 2, null)]);
        var doc = JobDocument.Parse("""{"name":"j","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":600}""", cp.Catalogue);

        // A provider that claims its job started long before it was leased is metered from the lease.
        var (early, _) = await cp.SubmitAsync(t.Id, doc, null);
        await cp.CycleAsync();
        var leasedAt = Now();
        clock.Advance(TimeSpan.FromSeconds(2));
        var running = await cp.ReportAsync(p.Id, reg.Epoch, early.Id, JobStates.Running, null, "started", observedMs: 0);
        Assert.Equal(leasedAt, running.StartedMs);

        // A claimed end in the future is metered to receipt.
        clock.Advance(TimeSpan.FromSeconds(10));
        var done = await cp.ReportAsync(p.Id, reg.Epoch, early.Id, JobStates.Succeeded, 0, "exit 0", observedMs: Now() + 3_600_000);
        Assert.Equal(Now(), done.EndedMs);

        // A job that ran 5 s while the control plane could not hear it for a minute: 5 s, not 60.
        var (late, _) = await cp.SubmitAsync(t.Id, doc, null);
        await cp.CycleAsync();
        clock.Advance(TimeSpan.FromSeconds(1));
        var startedAt = Now();
        await cp.ReportAsync(p.Id, reg.Epoch, late.Id, JobStates.Running, null, "started", observedMs: startedAt);
        clock.Advance(TimeSpan.FromSeconds(60));
        var ended = await cp.ReportAsync(p.Id, reg.Epoch, late.Id, JobStates.Succeeded, 0, "exit 0", observedMs: startedAt + 5_000);
        Assert.Equal(startedAt + 5_000, ended.EndedMs);
        var usage = Assert.Single(await store.JobUsageAsync(late.Id));
        Assert.Equal(5_000, usage.EndedMs - usage.StartedMs);

        // Its running report never got through at all: the final report's observed start stands in, bounded by the lease.
        var (unseen, _) = await cp.SubmitAsync(t.Id, doc, null);
        await cp.CycleAsync();
        var unseenLease = Now();
        clock.Advance(TimeSpan.FromSeconds(30));
        var whole = await cp.ReportAsync(p.Id, reg.Epoch, unseen.Id, JobStates.Succeeded, 0, "exit 0", observedMs: unseenLease + 9_000, observedStartMs: unseenLease + 2_000);
        Assert.Equal(unseenLease + 2_000, whole.StartedMs);
        Assert.Equal(7_000, Assert.Single(await store.JobUsageAsync(unseen.Id)).EndedMs - whole.StartedMs!.Value);
    }

    [Fact]
    public async Task PriorityPreemption_DecidedByTheCore_IsCarriedOut_WithinTheTenant_AfterTheNotice()
    {
        var (clock, store, cp, a, b, p, reg) = await PlaneAsync([new GroupOffer("g", 1000, 4096, null, 0, 1, null)]);
        await using var _ = store;
        long Now() => clock.GetUtcNow().ToUnixTimeMilliseconds();
        JobDocument Doc(string priority) => JobDocument.Parse($$$"""{"name":"j","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":600,"priority":"{{{priority}}}","retry":{"maxAttempts":1}}""", cp.Catalogue);

        var (low, _) = await cp.SubmitAsync(a.Id, Doc("low"), null);
        await cp.CycleAsync();
        await cp.ReportAsync(p.Id, reg.Epoch, low.Id, JobStates.Running, null, "started", observedMs: Now());

        // Another tenant's urgent job never preempts tenant a's work: it waits.
        var (strangers, _) = await cp.SubmitAsync(b.Id, Doc("urgent"), null);
        await cp.CycleAsync();
        Assert.Equal(JobStates.Queued, (await store.GetJobAsync(strangers.Id))!.State);
        Assert.Empty((await cp.HeartbeatAsync(p.Id, reg.Epoch, [low.Id])).Notices);

        // Tenant a's own urgent job does: the low job gets the notice; nothing is leased onto the node it still holds.
        await cp.CancelAsync(strangers.Id, "test: out of the way");
        var (urgent, _) = await cp.SubmitAsync(a.Id, Doc("urgent"), null);
        await cp.CycleAsync();
        Assert.Equal(JobStates.Queued, (await store.GetJobAsync(urgent.Id))!.State);
        var notice = Assert.Single((await cp.HeartbeatAsync(p.Id, reg.Epoch, [low.Id])).Notices);
        Assert.Equal(low.Id, notice.Job);
        Assert.Contains($"preempted by job {urgent.Id}", notice.Reason, StringComparison.Ordinal);
        await cp.CycleAsync();
        Assert.Equal(JobStates.Queued, (await store.GetJobAsync(urgent.Id))!.State);

        // The notice runs out: the agent is told to stop it, reports it ended, it is requeued with its attempt given back
        // (charged for what it ran), and the urgent job starts.
        clock.Advance(TimeSpan.FromSeconds(10));
        Assert.Contains(low.Id, (await cp.HeartbeatAsync(p.Id, reg.Epoch, [low.Id])).Stop);
        var requeued = await cp.ReportAsync(p.Id, reg.Epoch, low.Id, JobStates.Failed, 143, "terminated", observedMs: Now());
        Assert.Equal(JobStates.Queued, requeued.State);
        Assert.Equal(2, requeued.MaxAttempts);
        await cp.CycleAsync();
        Assert.Equal(JobStates.Leased, (await store.GetJobAsync(urgent.Id))!.State);
        Assert.Equal(JobStates.Queued, (await store.GetJobAsync(low.Id))!.State);
        Assert.Contains(await store.EventsAsync(low.Id), e => e.Message.StartsWith("preempted after notice: preempted by job", StringComparison.Ordinal));
    }

    [Fact]
    public async Task AVictimThatWasOnlyLeased_IsRequeuedAtOnce_WithoutANotice_AndThePreemptorStartsInTheNextCycle()
    {
        var (_, store, cp, a, _, p, reg) = await PlaneAsync([new GroupOffer("g", 1000, 4096, null, 0, 1, null)]);
        await using var _ = store;
        JobDocument Doc(string priority) => JobDocument.Parse($$$"""{"name":"j","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":600,"priority":"{{{priority}}}","retry":{"maxAttempts":1}}""", cp.Catalogue);

        var (low, _) = await cp.SubmitAsync(a.Id, Doc("low"), null);
        await cp.CycleAsync();
        Assert.Equal(JobStates.Leased, (await store.GetJobAsync(low.Id))!.State); // leased, its agent has not started it

        var (urgent, _) = await cp.SubmitAsync(a.Id, Doc("urgent"), null);
        await cp.CycleAsync();
        var back = (await store.GetJobAsync(low.Id))!;
        Assert.Equal((JobStates.Queued, 2, 2), (back.State, back.Attempt, back.MaxAttempts)); // a new attempt, the used one given back
        Assert.Contains(await store.EventsAsync(low.Id), e => e.Message == $"preempted by job {urgent.Id} of priority class 3 (this job's class is 0) before it started; requeued");
        Assert.Empty((await cp.HeartbeatAsync(p.Id, reg.Epoch, [])).Notices);

        await cp.CycleAsync();
        Assert.Equal(JobStates.Leased, (await store.GetJobAsync(urgent.Id))!.State);
        Assert.Equal(JobStates.Queued, (await store.GetJobAsync(low.Id))!.State);
    }

    [Fact]
    public async Task ALostProvidersRunningJob_IsRequeuedOnlyAfterTheAgentsOutageGrace_OneNoAgentHad_AtOnce()
    {
        var (clock, store, cp, t, _, p, reg) = await PlaneAsync([new GroupOffer("g", 1000, 4096, null, 0, 2, null)],
            new ControlPlaneOptions { LostAfter = TimeSpan.FromSeconds(10), AgentOutageGrace = TimeSpan.FromSeconds(30) });
        await using var _ = store;
        long Now() => clock.GetUtcNow().ToUnixTimeMilliseconds();
        var doc = JobDocument.Parse("""{"name":"j","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":600,"retry":{"maxAttempts":3}}""", cp.Catalogue);

        var (running, _) = await cp.SubmitAsync(t.Id, doc, null);
        await cp.CycleAsync();
        Assert.Single(await cp.LeasesAsync(p.Id, reg.Epoch, TimeSpan.Zero, CancellationToken.None)); // the agent has it
        await cp.ReportAsync(p.Id, reg.Epoch, running.Id, JobStates.Running, null, "started", observedMs: Now());
        var (notYetFetched, _) = await cp.SubmitAsync(t.Id, doc, null);
        await cp.CycleAsync();
        Assert.Equal(JobStates.Leased, (await store.GetJobAsync(notYetFetched.Id))!.State);

        // Lost after 10 s: nothing more is leased there; the job no agent had goes back at once.
        clock.Advance(TimeSpan.FromSeconds(11));
        await cp.TickAsync();
        Assert.Equal(ProviderStates.Lost, (await store.GetProviderAsync(p.Id))!.State);
        Assert.Equal(JobStates.Queued, (await store.GetJobAsync(notYetFetched.Id))!.State);
        Assert.Equal(JobStates.Running, (await store.GetJobAsync(running.Id))!.State);

        // The running one waits out the agent's grace (its agent may still run it while it cannot reach us) …
        clock.Advance(TimeSpan.FromSeconds(25));
        await cp.TickAsync();
        Assert.Equal(JobStates.Running, (await store.GetJobAsync(running.Id))!.State);

        // … and is requeued under its retry policy once lost-after plus the grace have passed.
        clock.Advance(TimeSpan.FromSeconds(5));
        await cp.TickAsync();
        var back = (await store.GetJobAsync(running.Id))!;
        Assert.Equal((JobStates.Queued, 2), (back.State, back.Attempt));
        Assert.Contains(await store.EventsAsync(running.Id), e => e.Message.StartsWith("lost: provider p stopped heartbeating", StringComparison.Ordinal));
    }

    [Fact]
    public async Task AProviderMarkedLostJustBeforeACrash_HasItsJobsHandledAfterTheRestart()
    {
        // The control plane marked the provider lost and died before handing its running job to the lifecycle: the
        // restarted one must not leave that job running on a provider nobody hears from.
        var options = new ControlPlaneOptions { LostAfter = TimeSpan.FromSeconds(10) };
        var (clock, store, before, t, _, p, reg) = await PlaneAsync([new GroupOffer("g", 1000, 4096, null, 0, 1, null)], options);
        await using var _ = store;
        long Now() => clock.GetUtcNow().ToUnixTimeMilliseconds();
        var doc = JobDocument.Parse("""{"name":"j","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":600,"retry":{"maxAttempts":3}}""", before.Catalogue);
        var (job, _) = await before.SubmitAsync(t.Id, doc, null);
        await before.CycleAsync();
        await before.ReportAsync(p.Id, reg.Epoch, job.Id, JobStates.Running, null, "started", observedMs: Now());
        await store.MarkProviderLostAsync(p.Id, reg.Epoch, Now()); // … and the process died here

        var after = new ControlPlane(store, store, clock, new ServerMetrics(), options, NullLogger<ControlPlane>.Instance);
        await after.RecoverAsync();
        clock.Advance(TimeSpan.FromSeconds(11));
        await after.TickAsync();
        var back = (await store.GetJobAsync(job.Id))!;
        Assert.Equal((JobStates.Queued, 2), (back.State, back.Attempt));
    }

    [Fact]
    public async Task APreemption_HoldsBackOnlyWhatNeedsTheVictimsNodes_TheRestOfTheQueueKeepsLeasing()
    {
        var (clock, store, cp, a, b, p, reg) = await PlaneAsync([new GroupOffer("big", 1000, 8192, null, 0, 2, null), new GroupOffer("small", 1000, 1024, null, 0, 1, null)]);
        await using var _ = store;
        long Now() => clock.GetUtcNow().ToUnixTimeMilliseconds();
        JobDocument Doc(string priority, int memory) => JobDocument.Parse($$$"""{"name":"j","command":["true"],"resources":{"cpu":1,"memoryMiB":{{{memory}}}},"timeLimitSeconds":600,"priority":"{{{priority}}}"}""", cp.Catalogue);

        // Tenant a's two low jobs fill the big nodes; the small node is free but too small for a's urgent job.
        var (low1, _) = await cp.SubmitAsync(a.Id, Doc("low", 2048), null);
        var (low2, _) = await cp.SubmitAsync(a.Id, Doc("low", 2048), null);
        await cp.CycleAsync();
        foreach (var j in new[] { low1, low2 })
        {
            await cp.ReportAsync(p.Id, reg.Epoch, j.Id, JobStates.Running, null, "started", observedMs: Now());
        }

        var (urgent, _) = await cp.SubmitAsync(a.Id, Doc("urgent", 4096), null);
        var (other, _) = await cp.SubmitAsync(b.Id, Doc("normal", 512), null);
        await cp.CycleAsync();

        // The urgent job preempts one low job and waits for it; tenant b's job, placed after it in the same cycle on the
        // small node no victim holds, is leased at once.
        Assert.Equal(JobStates.Queued, (await store.GetJobAsync(urgent.Id))!.State);
        Assert.Equal(JobStates.Leased, (await store.GetJobAsync(other.Id))!.State);
        var notice = Assert.Single((await cp.HeartbeatAsync(p.Id, reg.Epoch, [low1.Id, low2.Id])).Notices);
        Assert.Contains(notice.Job, new[] { low1.Id, low2.Id });
        Assert.Equal(JobStates.Running, (await store.GetJobAsync(low1.Id))!.State);
        Assert.Equal(JobStates.Running, (await store.GetJobAsync(low2.Id))!.State);
    }

    /// <summary>A control plane with priority preemption (10 s notice) on a fake clock: tenants a and b, one provider.</summary>
    [Fact]
    public async Task AnOfferPublished_AfterTheWalletsWereRead_DoesNotLetTheCorePlaceUnfundedWork()
    {
        // CI failure of stop 21: the cycle read the wallets only when the pool it had was priced, then rebuilt the pool
        // with a new offer and placed a broke tenant's job on it; the store refused the hold, not the core.
        var (clock, store, cp, a, _, p, _) = await PlaneAsync([new GroupOffer("g", 1000, 4096, null, 0, 1, null)]);
        await using var _ = store;
        long Now() => clock.GetUtcNow().ToUnixTimeMilliseconds();
        var doc = JobDocument.Parse("""{"name":"j","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":600}""", cp.Catalogue);
        await store.CreateOfferAsync(new OfferRecord(0, p.Id, "g", Tiers.OnDemand, PriceUnits.CoreHour, 36, 1, Now(), Now() + 86_400_000, null, Now(), null));
        cp.OffersChanged(await store.OffersAsync());
        var (job, _) = await cp.SubmitAsync(a.Id, doc, null);

        await cp.CycleAsync(); // the pool becomes priced inside this cycle
        await cp.CycleAsync();

        Assert.Equal(JobStates.Queued, (await store.GetJobAsync(job.Id))!.State);
        var why = string.Join("\n", cp.Explain((await store.GetJobAsync(job.Id))!));
        Assert.Contains($"tenant {a.Id} can put up 0.00", why, StringComparison.Ordinal);
        Assert.DoesNotContain("hold:", why, StringComparison.Ordinal);
    }

    private async Task<(FakeTimeProvider Clock, SqliteStore Store, ControlPlane Cp, TenantRecord A, TenantRecord B, ProviderRecord P, ProviderRecord Reg)> PlaneAsync(
        IReadOnlyList<GroupOffer> groups, ControlPlaneOptions? options = null)
    {
        var clock = new FakeTimeProvider(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));
        var now = clock.GetUtcNow().ToUnixTimeMilliseconds();
        var store = SqliteStore.Open(Path.Combine(_dir, "suanli.db"));
        var cp = new ControlPlane(store, store, clock, new ServerMetrics(), options ?? new ControlPlaneOptions { Preemption = true, SpotNotice = TimeSpan.FromSeconds(10) },
            NullLogger<ControlPlane>.Instance);
        await cp.RecoverAsync();
        var a = await store.CreateTenantAsync("a", "research", 1, now);
        cp.TenantCreated(a);
        var b = await store.CreateTenantAsync("b", "research", 1, now);
        cp.TenantCreated(b);
        var p = await store.CreateProviderAsync("p", "r", now);
        cp.ProviderCreated(p);
        return (clock, store, cp, a, b, p, await cp.RegisterAsync(p.Id, "r", groups));
    }
}
