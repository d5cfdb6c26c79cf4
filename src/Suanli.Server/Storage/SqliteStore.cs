using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Data.Sqlite;

namespace Suanli.Server.Storage;

/// <summary>
/// SQLite implementation of <see cref="IControlStore"/>. WAL mode; one writer task owns the write connection and
/// commits queued operations in groups (group commit): each operation runs inside its own SAVEPOINT, so a failing
/// operation rolls back alone, and every caller is answered only after the COMMIT that holds its change. Readers use
/// their own pooled connections and never block the writer (WAL).
/// Durability: <c>synchronous=FULL</c>, so an acknowledged operation survives a crash of the process and of the machine.
/// </summary>
public sealed partial class SqliteStore : IControlStore, ILedgerStore
{
    private const int MaxBatch = 512;
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);
    private readonly string _connectionString;
    private readonly SqliteConnection _writer;
    private readonly Channel<WriteOp> _queue = Channel.CreateUnbounded<WriteOp>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Task _writerTask;

    private SqliteStore(string path)
    {
        _connectionString = new SqliteConnectionStringBuilder { DataSource = path, Pooling = true, DefaultTimeout = 30 }.ToString();
        _writer = new SqliteConnection(_connectionString);
        _writer.Open();
        Exec(_writer, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000; PRAGMA cache_size=-65536; PRAGMA wal_autocheckpoint=16384;");
        Migrations.Apply(_writer);
        Prepared.Add(_writer, new Dictionary<string, SqliteCommand>(StringComparer.Ordinal));
        _writerTask = Task.Factory.StartNew(WriterLoop, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();
    }

    /// <summary>Opens (creating and migrating when needed) the database file at <paramref name="path"/>.</summary>
    public static SqliteStore Open(string path) => new(path);

    /// <summary>Total write operations committed and the number of commits (for the group-commit ratio).</summary>
    public (long Operations, long Commits) WriteStats => (Interlocked.Read(ref _ops), Interlocked.Read(ref _commits));

    private long _ops;
    private long _commits;

    private sealed class WriteOp(Func<SqliteConnection, object?> run, CancellationToken ct)
    {
        public Func<SqliteConnection, object?> Run { get; } = run;

        /// <summary>Cancels the operation only before it begins: one that began runs to its commit and answers.</summary>
        public CancellationToken Ct { get; } = ct;

        public TaskCompletionSource<object?> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public object? Result { get; set; }

        public Exception? Error { get; set; }
    }

    private async Task WriterLoop()
    {
        var batch = new List<WriteOp>(MaxBatch);
        while (await _queue.Reader.WaitToReadAsync().ConfigureAwait(false))
        {
            batch.Clear();
            while (batch.Count < MaxBatch && _queue.Reader.TryRead(out var op))
            {
                if (op.Ct.IsCancellationRequested)
                {
                    op.Done.TrySetCanceled(op.Ct); // never begun: nothing of it is written
                    continue;
                }

                batch.Add(op);
            }

            if (batch.Count == 0)
            {
                continue;
            }

            try
            {
                Exec(_writer, "BEGIN IMMEDIATE");
                foreach (var op in batch)
                {
                    Exec(_writer, "SAVEPOINT op");
                    try
                    {
                        op.Result = op.Run(_writer);
                        Exec(_writer, "RELEASE op");
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        // Whatever one operation throws is that operation's failure: its writes are undone, the
                        // caller gets the exception, and the writer goes on with the others.
                        Exec(_writer, "ROLLBACK TO op; RELEASE op");
                        op.Error = e;
                    }
                }

                Exec(_writer, "COMMIT");
                Interlocked.Add(ref _ops, batch.Count);
                Interlocked.Increment(ref _commits);
                foreach (var op in batch)
                {
                    if (op.Error is null)
                    {
                        op.Done.SetResult(op.Result);
                    }
                    else
                    {
                        op.Done.SetException(op.Error);
                    }
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // The batch itself failed (BEGIN or COMMIT: a full disk, a locked file): every caller gets the error,
                // and the loop lives on for the next batch.
                try
                {
                    Exec(_writer, "ROLLBACK");
                }
                catch (SqliteException)
                {
                    // No transaction left to roll back.
                }

                foreach (var op in batch)
                {
                    op.Done.TrySetException(e);
                }
            }
        }
    }

    /// <summary>
    /// Runs <paramref name="run"/> in the writer's next transaction. A token cancelled before the operation begins
    /// skips it (nothing written, <see cref="OperationCanceledException"/>); once begun it runs to its commit and
    /// answers, so a caller never wonders whether a write it was told about happened.
    /// </summary>
    internal async Task<T> Write<T>(Func<SqliteConnection, T> run, CancellationToken ct = default)
    {
        ct.ThrowIfCancellationRequested();
        var op = new WriteOp(c => run(c), ct);
        ObjectDisposedException.ThrowIf(!_queue.Writer.TryWrite(op), this);

        return (T)(await op.Done.Task.ConfigureAwait(false))!;
    }

    private async Task<T> Read<T>(Func<SqliteConnection, T> run, CancellationToken ct = default)
    {
        ct.ThrowIfCancellationRequested();
        await using var c = new SqliteConnection(_connectionString);
        await c.OpenAsync(ct).ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
        return run(c);
    }

    private static void Exec(SqliteConnection c, string sql)
    {
        using var cmd = Cmd(c, sql);
        cmd.ExecuteNonQuery();
    }

    // Statements of the writer connection stay prepared between uses (Microsoft.Data.Sqlite keeps a command's
    // statements while its text is unchanged); only the writer task runs them, one at a time.
    private static readonly ConditionalWeakTable<SqliteConnection, Dictionary<string, SqliteCommand>> Prepared = new();

    /// <summary>A command to run once: a cached prepared one on the writer connection, else a fresh one.</summary>
    private sealed class Stmt(SqliteCommand command, bool cached) : IDisposable
    {
        public int ExecuteNonQuery() => command.ExecuteNonQuery();

        public SqliteDataReader ExecuteReader() => command.ExecuteReader();

        public void Dispose()
        {
            if (!cached)
            {
                command.Dispose();
            }
        }
    }

    private static Stmt Cmd(SqliteConnection c, string sql, params (string Name, object? Value)[] args)
    {
        SqliteCommand cmd;
        var cached = Prepared.TryGetValue(c, out var cache);
        if (cached && cache!.TryGetValue(sql, out var hit))
        {
            cmd = hit;
            if (cmd.Parameters.Count == args.Length)
            {
                // Same statement, same parameters (by position): rebind the values without new parameter objects.
                var same = true;
                for (var i = 0; i < args.Length && same; i++)
                {
                    same = string.Equals(cmd.Parameters[i].ParameterName, args[i].Name, StringComparison.Ordinal);
                }

                if (same)
                {
                    for (var i = 0; i < args.Length; i++)
                    {
                        cmd.Parameters[i].Value = args[i].Value ?? DBNull.Value;
                    }

                    return new Stmt(cmd, cached);
                }
            }

            cmd.Parameters.Clear();
        }
        else
        {
            cmd = c.CreateCommand();
            cmd.CommandText = sql;
            if (cached)
            {
                cache![sql] = cmd;
            }
        }

        foreach (var (name, value) in args)
        {
            cmd.Parameters.AddWithValue(name, value ?? DBNull.Value);
        }

        return new Stmt(cmd, cached);
    }

    private static List<T> Query<T>(SqliteConnection c, string sql, Func<SqliteDataReader, T> map, params (string, object?)[] args)
    {
        using var cmd = Cmd(c, sql, args);
        using var r = cmd.ExecuteReader();
        var list = new List<T>();
        while (r.Read())
        {
            list.Add(map(r));
        }

        return list;
    }

    private static long? NLong(SqliteDataReader r, int i) => r.IsDBNull(i) ? null : r.GetInt64(i);

    private static string? NStr(SqliteDataReader r, int i) => r.IsDBNull(i) ? null : r.GetString(i);

    // ---- tenants ----
    private static TenantRecord MapTenant(SqliteDataReader r) => new(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetDouble(3), r.GetInt64(4));

    private const string TenantCols = "id, name, sector, weight, created";

    public Task<TenantRecord> CreateTenantAsync(string name, string sector, double weight, long nowMs, IdempotencyClaim? once = null, CancellationToken ct = default) => Write(c =>
    {
        if (Query(c, "SELECT 1 FROM tenants WHERE name = $n", r => 1, ("$n", name)).Count > 0)
        {
            throw new StoreConflictException("name_taken", $"name: a tenant named '{name}' already exists");
        }

        var t = Query(c, $"INSERT INTO tenants(name, sector, weight, created) VALUES($n, $s, $w, $t) RETURNING {TenantCols}", MapTenant,
            ("$n", name), ("$s", sector), ("$w", weight), ("$t", nowMs))[0];
        Claim(c, once, t.Id, nowMs);
        return t;
    }, ct);

    /// <summary>Records an Idempotency-Key for the resource just made, in its transaction.</summary>
    private static void Claim(SqliteConnection c, IdempotencyClaim? once, long resourceId, long nowMs)
    {
        if (once is null)
        {
            return;
        }

        using var cmd = Cmd(c, "INSERT INTO idempotency(scope, key, resource, created, request_hash) VALUES($s, $k, $r, $t, $h)",
            ("$s", once.Scope), ("$k", once.Key), ("$r", resourceId.ToString(System.Globalization.CultureInfo.InvariantCulture)), ("$t", nowMs), ("$h", once.RequestHash));
        cmd.ExecuteNonQuery();
    }

    public Task<IReadOnlyList<TenantRecord>> ListTenantsAsync(CancellationToken ct = default) =>
        Read<IReadOnlyList<TenantRecord>>(c => Query(c, $"SELECT {TenantCols} FROM tenants ORDER BY id", MapTenant), ct);

    public Task<TenantRecord?> GetTenantAsync(long id, CancellationToken ct = default) =>
        Read(c => Query(c, $"SELECT {TenantCols} FROM tenants WHERE id = $id", MapTenant, ("$id", id)).FirstOrDefault(), ct);

    // ---- keys ----
    private const string KeyCols = "id, prefix, role, tenant_id, provider_id, created, revoked";

    private static KeyRecord MapKey(SqliteDataReader r) => new(r.GetInt64(0), r.GetString(1), r.GetString(2), NLong(r, 3), NLong(r, 4), r.GetInt64(5), NLong(r, 6));

    public Task<KeyRecord> CreateKeyAsync(byte[] hash, string prefix, string role, long? tenantId, long? providerId, long nowMs, IdempotencyClaim? once = null, CancellationToken ct = default) => Write(c =>
    {
        var k = Query(c, $"INSERT INTO api_keys(hash, prefix, role, tenant_id, provider_id, created) VALUES($h, $p, $r, $t, $v, $c) RETURNING {KeyCols}", MapKey,
            ("$h", hash), ("$p", prefix), ("$r", role), ("$t", tenantId), ("$v", providerId), ("$c", nowMs))[0];
        Claim(c, once, k.Id, nowMs);
        return k;
    }, ct);

    public Task<KeyRecord?> FindKeyAsync(byte[] hash, CancellationToken ct = default) =>
        Read(c => Query(c, $"SELECT {KeyCols} FROM api_keys WHERE hash = $h AND revoked IS NULL", MapKey, ("$h", hash)).FirstOrDefault(), ct);

    public Task<IReadOnlyList<KeyRecord>> ListKeysAsync(CancellationToken ct = default) =>
        Read<IReadOnlyList<KeyRecord>>(c => Query(c, $"SELECT {KeyCols} FROM api_keys ORDER BY id", MapKey), ct);

    public Task<bool> RevokeKeyAsync(long id, long nowMs, CancellationToken ct = default) => Write(c =>
    {
        using var cmd = Cmd(c, "UPDATE api_keys SET revoked = $t WHERE id = $id AND revoked IS NULL", ("$t", nowMs), ("$id", id));
        return cmd.ExecuteNonQuery() == 1;
    }, ct);

    // ---- providers ----
    private const string ProviderCols = "id, name, region, state, epoch, last_heartbeat, groups, created";

    private static ProviderRecord MapProvider(SqliteDataReader r) => new(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetInt64(4), NLong(r, 5),
        JsonSerializer.Deserialize<List<GroupOffer>>(r.GetString(6), Json) ?? [], r.GetInt64(7));

    public Task<ProviderRecord> CreateProviderAsync(string name, string region, long nowMs, IdempotencyClaim? once = null, CancellationToken ct = default) => Write(c =>
    {
        if (Query(c, "SELECT 1 FROM providers WHERE name = $n", r => 1, ("$n", name)).Count > 0)
        {
            throw new StoreConflictException("name_taken", $"name: a provider named '{name}' already exists");
        }

        var p = Query(c, $"INSERT INTO providers(name, region, state, epoch, groups, created) VALUES($n, $r, 'new', 0, '[]', $t) RETURNING {ProviderCols}",
            MapProvider, ("$n", name), ("$r", region), ("$t", nowMs))[0];
        Claim(c, once, p.Id, nowMs);
        return p;
    }, ct);

    public Task<ProviderRecord?> GetProviderAsync(long id, CancellationToken ct = default) =>
        Read(c => Query(c, $"SELECT {ProviderCols} FROM providers WHERE id = $id", MapProvider, ("$id", id)).FirstOrDefault(), ct);

    public Task<ProviderRecord?> FindProviderAsync(string name, CancellationToken ct = default) =>
        Read(c => Query(c, $"SELECT {ProviderCols} FROM providers WHERE name = $n", MapProvider, ("$n", name)).FirstOrDefault(), ct);

    public Task<IReadOnlyList<ProviderRecord>> ListProvidersAsync(CancellationToken ct = default) =>
        Read<IReadOnlyList<ProviderRecord>>(c => Query(c, $"SELECT {ProviderCols} FROM providers ORDER BY id", MapProvider), ct);

    public Task<(ProviderRecord Provider, IReadOnlyList<JobRecord> Orphans)> RegisterAsync(long providerId, string region, IReadOnlyList<GroupOffer> groups, long nowMs, CancellationToken ct = default) => Write(c =>
    {
        var p = Query(c, $"UPDATE providers SET region = $r, groups = $g, epoch = epoch + 1, state = 'ready', last_heartbeat = $t WHERE id = $id RETURNING {ProviderCols}",
            MapProvider, ("$r", region), ("$g", JsonSerializer.Serialize(groups, Json)), ("$t", nowMs), ("$id", providerId)).FirstOrDefault()
            ?? throw new StoreConflictException("not_found", $"provider {providerId} does not exist");
        var orphans = Query(c, $"SELECT {JobCols} FROM jobs WHERE provider_id = $p AND state IN ('leased','running') AND epoch < $e", MapJob,
            ("$p", providerId), ("$e", p.Epoch));
        return ((ProviderRecord, IReadOnlyList<JobRecord>))(p, orphans);
    }, ct);

    public Task HeartbeatAsync(long providerId, long epoch, long nowMs, CancellationToken ct = default) => Write(c =>
    {
        using var cmd = Cmd(c, "UPDATE providers SET last_heartbeat = $t WHERE id = $id AND epoch = $e AND state = 'ready'", ("$t", nowMs), ("$id", providerId), ("$e", epoch));
        if (cmd.ExecuteNonQuery() != 1)
        {
            throw new StoreConflictException("stale_epoch", $"epoch: {epoch} is not the provider's current epoch (or the provider was marked lost); register again");
        }

        return 0;
    }, ct);

    public Task MarkProviderLostAsync(long providerId, long epoch, long nowMs, CancellationToken ct = default) => Write(c =>
    {
        using var cmd = Cmd(c, "UPDATE providers SET state = 'lost' WHERE id = $id AND epoch = $e", ("$id", providerId), ("$e", epoch));
        return cmd.ExecuteNonQuery();
    }, ct);

    // ---- jobs ----
    private const string JobCols = "id, tenant_id, name, spec, state, attempt, max_attempts, priority, submitted, provider_id, group_id, epoch, allocation, started, ended, exit_code, reason";

    private static JobRecord MapJob(SqliteDataReader r) => new(r.GetInt64(0), r.GetInt64(1), r.GetString(2), r.GetString(3), r.GetString(4), r.GetInt32(5), r.GetInt32(6),
        r.GetInt32(7), r.GetInt64(8), NLong(r, 9), NStr(r, 10), NLong(r, 11), NStr(r, 12), NLong(r, 13), NLong(r, 14), r.IsDBNull(15) ? null : r.GetInt32(15), NStr(r, 16));

    public Task<(JobRecord Job, bool Replayed)> SubmitAsync(NewJob job, CancellationToken ct = default) => Write(c =>
    {
        if (job.IdempotencyKey is not null)
        {
            var existing = Query(c, $"SELECT {JobCols} FROM jobs WHERE tenant_id = $t AND idempotency_key = $k", MapJob, ("$t", job.TenantId), ("$k", job.IdempotencyKey));
            if (existing.Count > 0)
            {
                if (existing[0].Spec != job.Spec || existing[0].Name != job.Name)
                {
                    throw new StoreConflictException("id_reused", $"Idempotency-Key: already used for job {existing[0].Id} with a different body; use a new key for a new job");
                }

                return (existing[0], true);
            }
        }

        var rec = Query(c, $"INSERT INTO jobs(tenant_id, name, spec, state, attempt, max_attempts, priority, submitted, idempotency_key) VALUES($t, $n, $s, 'queued', 1, $m, $p, $at, $k) RETURNING {JobCols}",
            MapJob, ("$t", job.TenantId), ("$n", job.Name), ("$s", job.Spec), ("$m", job.MaxAttempts), ("$p", job.PriorityClass), ("$at", job.SubmittedMs), ("$k", job.IdempotencyKey))[0];
        AddEvent(c, rec.Id, job.SubmittedMs, JobStates.Queued, "submitted");
        return (rec, false);
    }, ct);

    private static void AddEvent(SqliteConnection c, long jobId, long atMs, string state, string message)
    {
        using var cmd = Cmd(c, "INSERT INTO job_events(job_id, seq, at, state, message) VALUES($j, (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = $j), $a, $s, $m)",
            ("$j", jobId), ("$a", atMs), ("$s", state), ("$m", message));
        cmd.ExecuteNonQuery();
    }

    public Task<JobRecord?> GetJobAsync(long id, CancellationToken ct = default) =>
        Read(c => Query(c, $"SELECT {JobCols} FROM jobs WHERE id = $id", MapJob, ("$id", id)).FirstOrDefault(), ct);

    public Task<Page<JobRecord>> ListJobsAsync(JobQuery query, CancellationToken ct = default) => Read(c =>
    {
        var q = query;
        var where = new List<string> { "id > $after" };
        if (q.TenantId is not null)
        {
            where.Add("tenant_id = $t");
        }

        if (q.State is not null)
        {
            where.Add("state = $s");
        }

        var items = Query(c, $"SELECT {JobCols} FROM jobs WHERE {string.Join(" AND ", where)} ORDER BY id LIMIT $l", MapJob,
            ("$after", q.After ?? 0), ("$t", q.TenantId), ("$s", q.State), ("$l", q.Limit + 1));
        var next = items.Count > q.Limit ? items[q.Limit - 1].Id.ToString(System.Globalization.CultureInfo.InvariantCulture) : null;
        return new Page<JobRecord>(items.Count > q.Limit ? items.GetRange(0, q.Limit) : items, next);
    }, ct);

    public Task<IReadOnlyList<JobRecord>> ActiveJobsAsync(CancellationToken ct = default) =>
        Read<IReadOnlyList<JobRecord>>(c => Query(c, $"SELECT {JobCols} FROM jobs WHERE state IN ('queued','leased','running') ORDER BY id", MapJob), ct);

    public Task<IReadOnlyList<JobRecord>> RecentFinishedJobsAsync(int perTenant, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(perTenant);
        const string Finished = "state IN ('succeeded','failed') AND started IS NOT NULL AND ended IS NOT NULL";
        return Read<IReadOnlyList<JobRecord>>(c => Query(c,
            $"SELECT {JobCols} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY tenant_id ORDER BY ended DESC, id DESC) AS rn FROM jobs WHERE {Finished}) WHERE rn <= $n ORDER BY ended, id",
            MapJob, ("$n", perTenant)), ct);
    }

    public Task<JobRecord> ApplyAsync(Transition transition, CancellationToken ct = default) => Write(c => ApplyOne(c, transition), ct);

    private static JobRecord ApplyOne(SqliteConnection c, Transition t)
    {
        var sets = new List<string> { "state = $to" };
        var args = new List<(string, object?)> { ("$to", t.To), ("$id", t.JobId) };
        if (t.Lease is { } l)
        {
            sets.Add("provider_id = $lp, group_id = $lg, epoch = $le, allocation = $la");
            args.AddRange([("$lp", l.Provider), ("$lg", l.Group), ("$le", l.Epoch), ("$la", l.Allocation)]);
        }

        if (t.Requeue)
        {
            sets.Add("provider_id = NULL, group_id = NULL, epoch = NULL, allocation = NULL, started = NULL, ended = NULL, exit_code = NULL, attempt = attempt + 1");
            if (t.GrantAttempt)
            {
                sets.Add("max_attempts = max_attempts + 1");
            }
        }

        void Set(string col, object? value)
        {
            if (value is not null)
            {
                sets.Add($"{col} = ${col}");
                args.Add(($"${col}", value));
            }
        }

        Set("started", t.StartedMs);
        Set("ended", t.EndedMs);
        Set("exit_code", t.ExitCode);
        Set("reason", t.Reason);
        var from = string.Join(",", t.From.Select((s, i) => $"$f{i}"));
        args.AddRange(t.From.Select((s, i) => ($"$f{i}", (object?)s)));
        var guard = $"id = $id AND state IN ({from})";
        if (t.RequireEpoch is { } e)
        {
            guard += " AND epoch = $re";
            args.Add(("$re", e));
        }

        if (t.RequireProvider is { } p)
        {
            guard += " AND provider_id = $rp";
            args.Add(("$rp", p));
        }

        if (t.Lease is not null)
        {
            // Fenced: a lease is only written for the provider's current epoch while it is ready. A cycle that read the
            // pool before the agent re-registered would otherwise lease to an epoch no agent will ever ask for.
            guard += " AND EXISTS (SELECT 1 FROM providers WHERE id = $lp AND epoch = $le AND state = 'ready')";
        }

        var rec = Query(c, $"UPDATE jobs SET {string.Join(", ", sets)} WHERE {guard} RETURNING {JobCols}", MapJob, [.. args]).FirstOrDefault();
        if (rec is null && t.Lease is { } fenced
            && Query(c, "SELECT epoch, state FROM providers WHERE id = $p", r => (Epoch: r.GetInt64(0), State: r.GetString(1)), ("$p", fenced.Provider)).FirstOrDefault() is var (pe, ps)
            && (pe != fenced.Epoch || ps != "ready"))
        {
            throw new StoreConflictException("stale_epoch", $"epoch: provider {fenced.Provider} is at epoch {pe} ({ps}), not {fenced.Epoch}; not leased");
        }

        if (rec is null)
        {
            var now = Query(c, $"SELECT {JobCols} FROM jobs WHERE id = $id", MapJob, ("$id", t.JobId)).FirstOrDefault();
            throw now is null
                ? new StoreConflictException("not_found", $"job {t.JobId} does not exist")
                : t.RequireEpoch is not null && now.Epoch != t.RequireEpoch && !JobStates.IsTerminal(now.State)
                    ? new StoreConflictException("stale_epoch", $"epoch: job {t.JobId} is held under epoch {now.Epoch}, not {t.RequireEpoch}")
                    : new StoreConflictException("invalid_state", $"state: job {t.JobId} is {now.State}; cannot go to {t.To}");
        }

        AddEvent(c, t.JobId, t.AtMs, t.To, t.Message);
        if (t.Settle is { } settle)
        {
            SettleLocked(c, t.JobId, settle, t.FeeBps, t.AtMs);
        }

        if (t.Hold is { } hold)
        {
            HoldLocked(c, rec, hold, t.AtMs);
        }

        if (t.Usage is { } u)
        {
            using var cmd = Cmd(c, "INSERT OR REPLACE INTO usage(job_id, attempt, tenant_id, provider_id, group_id, model, cards, gpu_milli, milli_cpu, memory_mib, started, ended, backend_elapsed, backend_tres) VALUES($j, $a, $t, $p, $g, $m, $cards, $gm, $cpu, $mem, $s, $e, $be, $bt)",
                ("$j", u.JobId), ("$a", u.Attempt), ("$t", u.TenantId), ("$p", u.ProviderId), ("$g", u.GroupId), ("$m", u.Model), ("$cards", u.Cards), ("$gm", u.GpuMilli),
                ("$cpu", u.MilliCpu), ("$mem", u.MemoryMiB), ("$s", u.StartedMs), ("$e", u.EndedMs), ("$be", u.BackendElapsedSeconds), ("$bt", u.BackendTres));
            cmd.ExecuteNonQuery();
        }

        return rec;
    }

    public Task AppendLogAsync(long jobId, int attempt, long? offset, string data, long capBytes = LogLimits.DefaultCapBytes, CancellationToken ct = default) => Write(c =>
    {
        var totals = Query(c, "SELECT stored_bytes, dropped_bytes, dropped_end, marker_seq FROM log_totals WHERE job_id = $j AND attempt = $a",
            r => (Stored: r.GetInt64(0), Dropped: r.GetInt64(1), DroppedEnd: r.GetInt64(2), Marker: NLong(r, 3)), ("$j", jobId), ("$a", attempt)).FirstOrDefault();
        if (offset is { } o && totals.Marker is not null && o + data.Length <= totals.DroppedEnd)
        {
            return 0; // A resend of output already counted as dropped.
        }

        var bytes = (long)Encoding.UTF8.GetByteCount(data);
        var room = Math.Max(0, capBytes - totals.Stored);
        var keep = data;
        if (bytes > room)
        {
            // Keep the prefix that fits (whole characters), drop the rest.
            var chars = 0;
            long used = 0;
            while (chars < data.Length)
            {
                var step = char.IsHighSurrogate(data[chars]) && chars + 1 < data.Length ? 2 : 1;
                var size = Encoding.UTF8.GetByteCount(data.AsSpan(chars, step));
                if (used + size > room)
                {
                    break;
                }

                used += size;
                chars += step;
            }

            keep = data[..chars];
        }

        var stored = 0;
        if (keep.Length > 0)
        {
            using var cmd = Cmd(c, "INSERT OR IGNORE INTO job_logs(job_id, seq, data, attempt, chunk_offset) VALUES($j, (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_logs WHERE job_id = $j), $d, $a, $o)",
                ("$j", jobId), ("$d", keep), ("$a", attempt), ("$o", offset));
            stored = cmd.ExecuteNonQuery();
            if (stored == 0)
            {
                return 0; // A resend of a chunk already stored.
            }
        }

        var keptBytes = keep.Length == data.Length ? bytes : Encoding.UTF8.GetByteCount(keep);
        var dropped = totals.Dropped + bytes - keptBytes;
        var marker = totals.Marker;
        if (dropped > 0)
        {
            var text = LogLimits.Marker(capBytes, dropped);
            if (marker is null)
            {
                marker = Query(c, "INSERT INTO job_logs(job_id, seq, data, attempt, chunk_offset) VALUES($j, (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_logs WHERE job_id = $j), $d, $a, NULL) RETURNING seq",
                    r => r.GetInt64(0), ("$j", jobId), ("$d", text), ("$a", attempt))[0];
            }
            else
            {
                Update(c, "UPDATE job_logs SET data = $d WHERE job_id = $j AND seq = $s", ("$d", text), ("$j", jobId), ("$s", marker));
            }
        }

        var droppedEnd = Math.Max(totals.DroppedEnd, dropped > totals.Dropped && offset is { } off ? off + data.Length : totals.DroppedEnd);
        using (var up = Cmd(c, "INSERT INTO log_totals(job_id, attempt, stored_bytes, dropped_bytes, dropped_end, marker_seq) VALUES($j, $a, $s, $d, $e, $m) "
            + "ON CONFLICT(job_id, attempt) DO UPDATE SET stored_bytes = excluded.stored_bytes, dropped_bytes = excluded.dropped_bytes, dropped_end = excluded.dropped_end, marker_seq = excluded.marker_seq",
            ("$j", jobId), ("$a", attempt), ("$s", totals.Stored + keptBytes), ("$d", dropped), ("$e", droppedEnd), ("$m", marker)))
        {
            up.ExecuteNonQuery();
        }

        return stored;
    }, ct);

    public Task<int> PurgeLogsAsync(long endedBeforeMs, CancellationToken ct = default) => Write(c =>
    {
        const string Finished = "SELECT id FROM jobs WHERE state IN ('succeeded','failed','cancelled','lost') AND ended IS NOT NULL AND ended < $t";
        using var totals = Cmd(c, $"DELETE FROM log_totals WHERE job_id IN ({Finished})", ("$t", endedBeforeMs));
        totals.ExecuteNonQuery();
        using var logs = Cmd(c, $"DELETE FROM job_logs WHERE job_id IN ({Finished})", ("$t", endedBeforeMs));
        return logs.ExecuteNonQuery();
    }, ct);

    public Task<IReadOnlyList<LogChunk>> ReadLogsAsync(long jobId, long after, int limit, int? attempt = null, CancellationToken ct = default) => Read<IReadOnlyList<LogChunk>>(c =>
        Query(c, "SELECT seq, data, COALESCE(attempt, 1) FROM job_logs WHERE job_id = $j AND seq > $a AND ($t IS NULL OR COALESCE(attempt, 1) = $t) ORDER BY seq LIMIT $l",
            r => new LogChunk(r.GetInt64(0), r.GetString(1), r.GetInt32(2)), ("$j", jobId), ("$a", after), ("$t", attempt), ("$l", limit)), ct);

    public Task<IReadOnlyList<JobEvent>> EventsAsync(long jobId, CancellationToken ct = default) => Read<IReadOnlyList<JobEvent>>(c =>
        Query(c, "SELECT job_id, seq, at, state, message FROM job_events WHERE job_id = $j ORDER BY seq",
            r => new JobEvent(r.GetInt64(0), r.GetInt32(1), r.GetInt64(2), r.GetString(3), r.GetString(4)), ("$j", jobId)), ct);

    private const string UsageCols = "job_id, attempt, tenant_id, provider_id, group_id, model, cards, gpu_milli, milli_cpu, memory_mib, started, ended, backend_elapsed, backend_tres";

    private static UsageRecord MapUsage(SqliteDataReader r) =>
        new(r.GetInt64(0), r.GetInt32(1), r.GetInt64(2), r.GetInt64(3), r.GetString(4), NStr(r, 5), r.GetInt32(6), r.GetInt64(7), r.GetInt64(8), r.GetInt64(9), r.GetInt64(10), r.GetInt64(11))
        {
            BackendElapsedSeconds = NLong(r, 12), BackendTres = NStr(r, 13),
        };

    public Task<IReadOnlyList<UsageRecord>> UsageAsync(long? tenantId, long fromMs, long toMs, CancellationToken ct = default) => Read<IReadOnlyList<UsageRecord>>(c =>
        Query(c, $"SELECT {UsageCols} FROM usage WHERE ended > $f AND started < $to AND ($t IS NULL OR tenant_id = $t) ORDER BY job_id, attempt", MapUsage,
            ("$f", fromMs), ("$to", toMs), ("$t", tenantId)), ct);

    public Task<IReadOnlyList<UsageRecord>> JobUsageAsync(long jobId, CancellationToken ct = default) => Read<IReadOnlyList<UsageRecord>>(c =>
        Query(c, $"SELECT {UsageCols} FROM usage WHERE job_id = $j ORDER BY attempt", MapUsage, ("$j", jobId)), ct);

    public Task<(string Resource, string? RequestHash)?> IdempotentGetAsync(string scope, string key, CancellationToken ct = default) =>
        Read(c => Query(c, "SELECT resource, request_hash FROM idempotency WHERE scope = $s AND key = $k", r => ((string Resource, string? RequestHash)?)(r.GetString(0), NStr(r, 1)),
            ("$s", scope), ("$k", key)).FirstOrDefault(), ct);

    public Task<IReadOnlyDictionary<string, long>> CountJobsByStateAsync(CancellationToken ct = default) => Read<IReadOnlyDictionary<string, long>>(c =>
        Query(c, "SELECT state, COUNT(*) FROM jobs GROUP BY state", r => (r.GetString(0), r.GetInt64(1))).ToDictionary(x => x.Item1, x => x.Item2), ct);

    /// <summary>Stops accepting writes, finishes the queued ones and closes the database.</summary>
    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        await _writerTask.ConfigureAwait(false);
        if (Prepared.TryGetValue(_writer, out var cache))
        {
            foreach (var cmd in cache.Values)
            {
                await cmd.DisposeAsync().ConfigureAwait(false);
            }

            Prepared.Remove(_writer);
        }

        await _writer.DisposeAsync().ConfigureAwait(false);
        SqliteConnection.ClearAllPools();
    }
}
