using Microsoft.Data.Sqlite;
using Suanli.Server.Storage;

namespace Suanli.Server.Tests;

/// <summary>
/// What every <see cref="IControlStore"/> must do; each engine runs these against a real database (SQLite here;
/// PostgreSQL follows with its own subclass).
/// </summary>
public abstract class StoreCompliance
{
    protected abstract IControlStore Create();

    private static NewJob Job(long tenant, string? idem = null) => new(tenant, "j", """{"name":"j"}""", 2, 1, 1000, idem);

    [Fact]
    public async Task Submit_IsIdempotentPerTenant()
    {
        await using var s = Create();
        var t1 = await s.CreateTenantAsync("a", "x", 1, 1);
        var t2 = await s.CreateTenantAsync("b", "x", 1, 1);
        var (j1, r1) = await s.SubmitAsync(Job(t1.Id, "k"));
        var (j2, r2) = await s.SubmitAsync(Job(t1.Id, "k"));
        var (j3, r3) = await s.SubmitAsync(Job(t2.Id, "k"));
        Assert.False(r1);
        Assert.True(r2);
        Assert.Equal(j1.Id, j2.Id);
        Assert.False(r3);
        Assert.NotEqual(j1.Id, j3.Id);
        Assert.Equal(2, (await s.ActiveJobsAsync()).Count);
        var ev = Assert.Single(await s.EventsAsync(j1.Id));
        Assert.Equal(JobStates.Queued, ev.State);
    }

    [Fact]
    public async Task ACancelledToken_SkipsAnOperationBeforeItBegins_NothingIsWritten()
    {
        await using var s = Create();
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => s.CreateTenantAsync("never", "x", 1, 1, ct: cancelled.Token));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => s.SubmitAsync(Job(1), cancelled.Token));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => s.ListTenantsAsync(cancelled.Token));
        Assert.Empty(await s.ListTenantsAsync());
        Assert.Empty(await s.ActiveJobsAsync());
        var t = await s.CreateTenantAsync("later", "x", 1, 1, ct: CancellationToken.None);
        Assert.Equal("later", Assert.Single(await s.ListTenantsAsync()).Name);
        Assert.Equal(t.Id, (await s.GetTenantAsync(t.Id))!.Id);
    }

    [Fact]
    public async Task IdempotencyKey_IsRecordedInTheTransactionThatCreates_AndAClashCreatesNothing()
    {
        await using var s = Create();
        var t = await s.CreateTenantAsync("a", "x", 1, 1, new IdempotencyClaim("tenant:1", "k", "h1"));
        Assert.Equal((t.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), "h1"), (await s.IdempotentGetAsync("tenant:1", "k"))!.Value);
        var p = await s.CreateProviderAsync("p", "r", 1, new IdempotencyClaim("provider:1", "k", "h2"));
        var key = await s.CreateKeyAsync([1, 2, 3], "sk-abc", "tenant", t.Id, null, 1, new IdempotencyClaim("key:1", "k", "h3"));
        Assert.Equal(p.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), (await s.IdempotentGetAsync("provider:1", "k"))!.Value.Resource);
        Assert.Equal(key.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), (await s.IdempotentGetAsync("key:1", "k"))!.Value.Resource);

        // The same key again (another process, or a replay that raced past the in-process lock): refused whole.
        await Assert.ThrowsAnyAsync<Exception>(() => s.CreateTenantAsync("b", "x", 1, 2, new IdempotencyClaim("tenant:1", "k", "h1")));
        await Assert.ThrowsAnyAsync<Exception>(() => s.CreateKeyAsync([4, 5, 6], "sk-def", "tenant", t.Id, null, 2, new IdempotencyClaim("key:1", "k", "h3")));
        Assert.Equal(["a"], (await s.ListTenantsAsync()).Select(x => x.Name));
        Assert.Single(await s.ListKeysAsync());
        Assert.NotNull(await s.CreateTenantAsync("c", "x", 1, 3)); // the writer lives on
    }

    [Fact]
    public async Task Transitions_AreGuardedByStateAndEpoch_AndLeaveAnEvent()
    {
        await using var s = Create();
        var t = await s.CreateTenantAsync("a", "x", 1, 1);
        var p = await s.CreateProviderAsync("p", "r", 1);
        var (reg, orphans) = await s.RegisterAsync(p.Id, "r", [new GroupOffer("g", 1000, 1024, null, 0, 1, null)], 2);
        Assert.Empty(orphans);
        var (j, _) = await s.SubmitAsync(Job(t.Id));
        var leased = await s.ApplyAsync(new Transition(j.Id, [JobStates.Queued], JobStates.Leased, "lease") { Lease = (p.Id, "g", reg.Epoch, "{}"), AtMs = 3 });
        Assert.Equal(reg.Epoch, leased.Epoch);

        var stale = await Assert.ThrowsAsync<StoreConflictException>(() =>
            s.ApplyAsync(new Transition(j.Id, [JobStates.Leased], JobStates.Running, "run") { RequireEpoch = reg.Epoch + 7, AtMs = 4 }));
        Assert.Equal("stale_epoch", stale.Code);
        var wrong = await Assert.ThrowsAsync<StoreConflictException>(() =>
            s.ApplyAsync(new Transition(j.Id, [JobStates.Running], JobStates.Succeeded, "done") { AtMs = 4 }));
        Assert.Equal("invalid_state", wrong.Code);
        Assert.Equal(JobStates.Leased, (await s.GetJobAsync(j.Id))!.State);

        await s.ApplyAsync(new Transition(j.Id, [JobStates.Leased], JobStates.Running, "run") { RequireEpoch = reg.Epoch, RequireProvider = p.Id, StartedMs = 5, AtMs = 5 });
        var (reg2, orphans2) = await s.RegisterAsync(p.Id, "r", reg.Groups, 6);
        Assert.Equal(reg.Epoch + 1, reg2.Epoch);
        Assert.Equal(j.Id, Assert.Single(orphans2).Id);
        var requeued = await s.ApplyAsync(new Transition(j.Id, [JobStates.Running], JobStates.Queued, "lost") { Requeue = true, AtMs = 7 });
        Assert.Equal(2, requeued.Attempt);
        Assert.Null(requeued.ProviderId);
        Assert.Equal(["queued", "leased", "running", "queued"], (await s.EventsAsync(j.Id)).Select(e => e.State));
        await Assert.ThrowsAsync<StoreConflictException>(() => s.HeartbeatAsync(p.Id, reg.Epoch, 8));
        await s.HeartbeatAsync(p.Id, reg2.Epoch, 8);
    }

    [Fact]
    public async Task ALease_IsFencedByTheProvidersCurrentEpoch_AndReadiness()
    {
        await using var s = Create();
        var t = await s.CreateTenantAsync("a", "x", 1, 1);
        var p = await s.CreateProviderAsync("p", "r", 1);
        var (j, _) = await s.SubmitAsync(Job(t.Id));
        Transition Lease(long epoch) => new(j.Id, [JobStates.Queued], JobStates.Leased, "lease") { Lease = (p.Id, "g", epoch, "{}"), AtMs = 3 };

        // Never registered: nobody would take the lease.
        Assert.Equal("stale_epoch", (await Assert.ThrowsAsync<StoreConflictException>(() => s.ApplyAsync(Lease(0)))).Code);
        var (reg, _) = await s.RegisterAsync(p.Id, "r", [new GroupOffer("g", 1000, 1024, null, 0, 1, null)], 2);
        var (reg2, _) = await s.RegisterAsync(p.Id, "r", reg.Groups, 2);

        // A cycle that read the pool before the agent re-registered: refused, and the job is still queued.
        Assert.Equal("stale_epoch", (await Assert.ThrowsAsync<StoreConflictException>(() => s.ApplyAsync(Lease(reg.Epoch)))).Code);
        Assert.Equal(JobStates.Queued, (await s.GetJobAsync(j.Id))!.State);
        Assert.Equal(["queued"], (await s.EventsAsync(j.Id)).Select(e => e.State));

        await s.MarkProviderLostAsync(p.Id, reg2.Epoch, 4);
        Assert.Equal("stale_epoch", (await Assert.ThrowsAsync<StoreConflictException>(() => s.ApplyAsync(Lease(reg2.Epoch)))).Code);
        var (reg3, _) = await s.RegisterAsync(p.Id, "r", reg.Groups, 5);
        Assert.Equal(reg3.Epoch, (await s.ApplyAsync(Lease(reg3.Epoch))).Epoch);
    }

    [Fact]
    public async Task Usage_IsRecordedWithTheFinalTransition()
    {
        await using var s = Create();
        var t = await s.CreateTenantAsync("a", "x", 1, 1);
        var p = await s.CreateProviderAsync("p", "r", 1);
        var (reg, _) = await s.RegisterAsync(p.Id, "r", [new GroupOffer("g", 1000, 1024, null, 0, 1, null)], 1);
        var (j, _) = await s.SubmitAsync(Job(t.Id));
        await s.ApplyAsync(new Transition(j.Id, [JobStates.Queued], JobStates.Leased, "l") { Lease = (p.Id, "g", reg.Epoch, "{}") });
        await s.ApplyAsync(new Transition(j.Id, [JobStates.Leased], JobStates.Succeeded, "ok")
        {
            Usage = new UsageRecord(j.Id, 1, t.Id, p.Id, "g", "A100", 2, 2000, 4000, 1024, 0, 3_600_000), EndedMs = 3_600_000,
        });
        var u = Assert.Single(await s.UsageAsync(t.Id, 0, long.MaxValue));
        Assert.Equal(2000, u.GpuMilli);
        Assert.Empty(await s.UsageAsync(t.Id + 1, 0, long.MaxValue));
    }

    [Fact]
    public async Task RecentFinishedJobs_AreEachTenantsLastRuns_OldestEndFirst()
    {
        await using var s = Create();
        var a = await s.CreateTenantAsync("a", "x", 1, 1);
        var b = await s.CreateTenantAsync("b", "x", 1, 1);
        var p = await s.CreateProviderAsync("p", "r", 1);
        var (reg, _) = await s.RegisterAsync(p.Id, "r", [new GroupOffer("g", 1000, 1024, null, 0, 1, null)], 1);

        async Task<long> Run(long tenant, string final, long started, long ended)
        {
            var (j, _) = await s.SubmitAsync(Job(tenant));
            await s.ApplyAsync(new Transition(j.Id, [JobStates.Queued], JobStates.Leased, "l") { Lease = (p.Id, "g", reg.Epoch, "{}") });
            await s.ApplyAsync(new Transition(j.Id, [JobStates.Leased], JobStates.Running, "r") { StartedMs = started, AtMs = started });
            await s.ApplyAsync(new Transition(j.Id, [JobStates.Running], final, "end") { EndedMs = ended, AtMs = ended });
            return j.Id;
        }

        var a1 = await Run(a.Id, JobStates.Succeeded, 0, 100);
        var a2 = await Run(a.Id, JobStates.Failed, 50, 400);
        var a3 = await Run(a.Id, JobStates.Succeeded, 10, 300);
        await Run(a.Id, JobStates.Cancelled, 0, 900);
        var b1 = await Run(b.Id, JobStates.Succeeded, 0, 200);
        var (queued, _) = await s.SubmitAsync(Job(b.Id));

        // a: the two latest ends (a3 at 300, a2 at 400; a1 is older, the cancelled one does not count); b: its only run.
        Assert.Equal([b1, a3, a2], (await s.RecentFinishedJobsAsync(2)).Select(j => j.Id));
        Assert.Equal([a1, b1, a3, a2], (await s.RecentFinishedJobsAsync(3)).Select(j => j.Id));
        Assert.DoesNotContain(queued.Id, (await s.RecentFinishedJobsAsync(10)).Select(j => j.Id));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => s.RecentFinishedJobsAsync(0));
    }

    [Fact]
    public async Task LogChunks_ResentWithTheSameOffset_AreStoredOnce()
    {
        await using var s = Create();
        var t = await s.CreateTenantAsync("a", "x", 1, 1);
        var (j, _) = await s.SubmitAsync(Job(t.Id));
        await s.AppendLogAsync(j.Id, 1, 0, "hello ");
        await s.AppendLogAsync(j.Id, 1, 0, "hello ");
        await s.AppendLogAsync(j.Id, 1, 6, "world\n");
        await s.AppendLogAsync(j.Id, 2, 0, "again\n");
        await s.AppendLogAsync(j.Id, 2, null, "x");
        await s.AppendLogAsync(j.Id, 2, null, "x");
        var chunks = await s.ReadLogsAsync(j.Id, 0, 100);
        Assert.Equal("hello world\nagain\nxx", string.Concat(chunks.Select(c => c.Data)));
        Assert.Equal(chunks.Select(c => c.Seq).Order(), chunks.Select(c => c.Seq));
        Assert.Single(await s.ReadLogsAsync(j.Id, chunks[^2].Seq, 100));
    }

    [Fact]
    public async Task Names_AreUnique_AndKeysResolveByHashOnlyUntilRevoked()
    {
        await using var s = Create();
        await s.CreateTenantAsync("same", "x", 1, 1);
        var dup = await Assert.ThrowsAsync<StoreConflictException>(() => s.CreateTenantAsync("same", "x", 1, 1));
        Assert.Equal("name_taken", dup.Code);
        var hash = new byte[32];
        hash[0] = 7;
        var k = await s.CreateKeyAsync(hash, "sk-abc", Roles.Operator, null, null, 1);
        Assert.Equal(k.Id, (await s.FindKeyAsync(hash))!.Id);
        Assert.True(await s.RevokeKeyAsync(k.Id, 2));
        Assert.Null(await s.FindKeyAsync(hash));
        Assert.False(await s.RevokeKeyAsync(k.Id, 3));
    }
}

public sealed class SqliteStoreTests : StoreCompliance, IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "suanli-store-" + Guid.NewGuid().ToString("N")[..10]);

    protected override IControlStore Create()
    {
        Directory.CreateDirectory(_dir);
        return SqliteStore.Open(Path.Combine(_dir, Guid.NewGuid().ToString("N") + ".db"));
    }

    [Fact]
    public async Task Migrations_AreRecorded_ReopenIsANoOp_AndANewerSchemaIsRefused()
    {
        Directory.CreateDirectory(_dir);
        var path = Path.Combine(_dir, "m.db");
        await (await Task.FromResult(SqliteStore.Open(path))).DisposeAsync();
        await SqliteStore.Open(path).DisposeAsync();
        await using (var c = new SqliteConnection($"Data Source={path}"))
        {
            c.Open();
            using var q = c.CreateCommand();
            q.CommandText = "SELECT COUNT(*), MAX(version) FROM schema_migrations; ";
            using var r = q.ExecuteReader();
            r.Read();
            Assert.Equal(Migrations.All.Count, r.GetInt32(0));
            r.Close();
            q.CommandText = "PRAGMA journal_mode";
            Assert.Equal("wal", (string)q.ExecuteScalar()!);
            q.CommandText = "INSERT INTO schema_migrations(version, applied) VALUES(999, 0)";
            q.ExecuteNonQuery();
        }

        SqliteConnection.ClearAllPools();
        var e = Assert.Throws<InvalidOperationException>(() => SqliteStore.Open(path));
        Assert.Contains("newer", e.Message, StringComparison.Ordinal);
    }

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        try
        {
            Directory.Delete(_dir, true);
        }
        catch (IOException)
        {
        }
    }
}
