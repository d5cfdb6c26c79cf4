using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace Suanli.Agent;

/// <summary>Agent settings.</summary>
public sealed record AgentOptions(Uri Server, string Key, string? Region, IReadOnlyList<GroupOffer> Groups, string WorkDir)
{
    /// <summary>Expected provider name (checked against the key's provider when given).</summary>
    public string? Name { get; init; }

    /// <summary>Replace a live agent of the same provider instead of being refused (its jobs are then lost to it).</summary>
    public bool TakeOver { get; init; }
}

/// <summary>The agent's fencing state was lost (stale epoch, or no heartbeat within the lease): it must re-register.</summary>
public sealed class FencedException(string message) : Exception(message);

/// <summary>
/// A pull-based provider agent (the executor pattern of Armada): registers its node groups under a new fencing epoch,
/// heartbeats, long-polls for leased jobs, runs them on its backend and reports state, exit codes and output. Every
/// report carries the epoch, so a superseded instance can change nothing. When it cannot renew its lease (no accepted
/// heartbeat within the lease timeout, or the server says its epoch is stale) it stops all its jobs — self-fencing —
/// and registers again.
/// </summary>
public sealed class ProviderAgent : IAsyncDisposable
{
    private static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);
    private readonly AgentOptions _options;
    private readonly HttpClient _http;
    private readonly IJobBackend _backend;
    private readonly ConcurrentDictionary<long, JobHandle> _running = new();
    private readonly ConcurrentDictionary<long, byte> _launching = new();
    private readonly Action<string> _log;
    private long _epoch;
    private TimeSpan _heartbeat = TimeSpan.FromSeconds(5);
    private TimeSpan _leaseTimeout = TimeSpan.FromSeconds(30);
    private DateTimeOffset _lastRenewed;

    public ProviderAgent(AgentOptions options, IJobBackend backend, Action<string>? log = null)
    {
        _options = options;
        _backend = backend;
        _log = log ?? (_ => { });
        _http = new HttpClient { BaseAddress = options.Server, Timeout = TimeSpan.FromSeconds(60) };
        _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", options.Key);
    }

    /// <summary>The current fencing epoch (0 before registering).</summary>
    public long Epoch => Interlocked.Read(ref _epoch);

    /// <summary>Ids of the jobs whose processes run now.</summary>
    public IReadOnlyCollection<long> Running => [.. _running.Keys];

    private readonly ConcurrentDictionary<long, bool> _noticed = new();

    /// <summary>Runs until cancelled: register, then heartbeat and lease loops; re-registers after fencing.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        if (_backend.ReapLeftovers() is > 0 and var left)
        {
            _log($"stopped {left} job(s) a previous agent left running in {_options.WorkDir}");
        }

        while (!ct.IsCancellationRequested)
        {
            if (await _backend.HealthAsync(ct) is { } why)
            {
                _log($"backend unhealthy, waiting before registering: {why}");
                await Task.Delay(TimeSpan.FromSeconds(1), ct).ContinueWith(_ => { }, TaskScheduler.Default);
                continue;
            }

            try
            {
                await RegisterAsync(ct);
                using var fenced = CancellationTokenSource.CreateLinkedTokenSource(ct);
                var hb = HeartbeatLoop(fenced);
                var lease = LeaseLoop(fenced.Token);
                await Task.WhenAny(hb, lease);
                await fenced.CancelAsync();
                await Task.WhenAll(hb.ContinueWith(_ => { }, TaskScheduler.Default), lease.ContinueWith(_ => { }, TaskScheduler.Default));
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                break;
            }
            catch (HttpRequestException e)
            {
                _log($"server unreachable: {e.Message}; retrying");
            }

            if (!ct.IsCancellationRequested)
            {
                SelfFence("lost the lease");
                try
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(500), ct);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
        }
    }

    private async Task RegisterAsync(CancellationToken ct)
    {
        var groups = _options.Groups.Count > 0 ? _options.Groups : await _backend.DiscoverAsync(ct) ?? [];
        using var resp = await _http.PostAsJsonAsync(AgentRoutes.Register, new AgentRegister(_options.Region, groups, _backend.Isolation, _options.TakeOver || _epoch > 0), Web, ct);
        if (!resp.IsSuccessStatusCode)
        {
            var body = await resp.Content.ReadAsStringAsync(ct);
            throw new InvalidOperationException($"register: {(int)resp.StatusCode} {body}");
        }

        var r = (await resp.Content.ReadFromJsonAsync<AgentRegistered>(Web, ct))!;
        if (_options.Name is not null && _options.Name != r.Name)
        {
            throw new InvalidOperationException($"--name: this key belongs to provider '{r.Name}', not '{_options.Name}'");
        }

        Interlocked.Exchange(ref _epoch, r.Epoch);
        _heartbeat = TimeSpan.FromSeconds(r.HeartbeatSeconds);
        _leaseTimeout = TimeSpan.FromSeconds(r.LeaseTimeoutSeconds);
        _outageGrace = TimeSpan.FromSeconds(Math.Clamp(r.OutageGraceSeconds, 0, ShipPatience.TotalSeconds));
        _lastRenewed = _lastAccepted = DateTimeOffset.UtcNow;
        _log($"registered as provider {r.Name} (epoch {r.Epoch}) with {groups.Count} node group(s); backend: {_backend.Describe}");
    }

    private async Task HeartbeatLoop(CancellationTokenSource fenced)
    {
        var ct = fenced.Token;
        while (!ct.IsCancellationRequested)
        {
            if (await _backend.HealthAsync(ct) is { } unhealthy)
            {
                // No heartbeat while the backend cannot run jobs: the control plane marks this provider lost and
                // moves its jobs; the lease check below then self-fences this agent.
                _log($"backend unhealthy, not renewing the lease: {unhealthy}");
            }
            else
            {
                try
                {
                    using var resp = await _http.PostAsJsonAsync(AgentRoutes.Heartbeat, new AgentHeartbeat(Epoch, [.. Running]), Web, ct);
                    if (resp.StatusCode == HttpStatusCode.Conflict)
                    {
                        _log("heartbeat refused: stale epoch (another agent registered for this provider, or the control plane marked it lost); stopping this instance's jobs");
                        return;
                    }

                    if (resp.IsSuccessStatusCode)
                    {
                        _lastRenewed = _lastAccepted = DateTimeOffset.UtcNow;
                        _downSince = null;
                        var reply = await resp.Content.ReadFromJsonAsync<AgentHeartbeatReply>(Web, ct);
                        foreach (var n in reply?.Notices ?? [])
                        {
                            if (_running.TryGetValue(n.Job, out var rp) && _noticed.TryAdd(n.Job, true))
                            {
                                var told = await _backend.NotifyAsync(rp, n.Seconds, n.Reason);
                                _log($"job {n.Job}: preemption notice, {n.Seconds} s ({n.Reason}){(told ? "" : "; the backend cannot signal it")}");
                            }
                        }

                        foreach (var id in reply?.Stop ?? [])
                        {
                            if (_running.TryGetValue(id, out var rp))
                            {
                                _backend.Stop(rp, _noticed.TryRemove(id, out _) ? "preempted" : "cancelled");
                            }
                        }
                    }
                }
                catch (HttpRequestException e) when (_outageGrace > TimeSpan.Zero && IsControlPlaneDown(e))
                {
                    // Nothing listens at the control plane's address: it is restarting. The jobs keep running, as slurmd's
                    // do while slurmctld restarts, for the grace the control plane granted at registration: it requeues
                    // a lost provider's jobs only after its lease plus that grace (and a restarted control plane gives
                    // every provider a full lease from its start), so they never run twice.
                    // Counted from the last heartbeat the control plane accepted (its own clock for the lease starts
                    // there), less one heartbeat for the check's cadence: the agent self-fences by that heartbeat plus
                    // grace plus lease, before the control plane would requeue.
                    var now = DateTimeOffset.UtcNow;
                    _downSince ??= now;
                    if (now - _lastAccepted <= _outageGrace - _heartbeat)
                    {
                        _lastRenewed = now;
                    }

                    _log($"control plane down for {(now - _downSince.Value).TotalSeconds:F0} s: jobs keep running");
                }
                catch (HttpRequestException e)
                {
                    _log($"heartbeat failed: {e.Message}");
                }
                catch (TaskCanceledException) when (!ct.IsCancellationRequested)
                {
                    _log("heartbeat timed out");
                }
            }

            if (DateTimeOffset.UtcNow - _lastRenewed > _leaseTimeout)
            {
                _log($"no heartbeat accepted for {_leaseTimeout.TotalSeconds:F0} s{(_downSince is { } d ? $" (control plane down since {d:u})" : "")}: self-fencing");
                return;
            }

            await Task.Delay(_heartbeat, ct);
        }
    }

    private async Task LeaseLoop(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            HttpResponseMessage resp;
            try
            {
                resp = await _http.PostAsJsonAsync(AgentRoutes.Lease, new AgentLease(Epoch, 10), Web, ct);
            }
            catch (HttpRequestException)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(500), ct);
                continue;
            }

            using (resp)
            {
                if (resp.StatusCode == HttpStatusCode.Conflict)
                {
                    return;
                }

                if (!resp.IsSuccessStatusCode)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(500), ct);
                    continue;
                }

                var page = await resp.Content.ReadFromJsonAsync<LeasePage>(Web, ct);
                foreach (var l in page?.Items ?? [])
                {
                    if (l.Epoch == Epoch && !_running.ContainsKey(l.Id) && _launching.TryAdd(l.Id, 0))
                    {
                        Launch(l);
                    }
                }
            }
        }
    }

    private void Launch(LeasedJob l)
    {
        var epoch = Epoch;
        var job = new JobLaunch(l.Id, l.Attempt, l.Command, l.Script, l.Env, l.Cpu, l.MemoryMiB, l.Tasks, l.TimeLimitSeconds) { Sbatch = l.Format == "sbatch", TenantId = l.TenantId };
        var logs = new LogShipper(this, l.Id, epoch);
        _reports[l.Id] = Task.Run(async () =>
        {
            JobHandle rp;
            try
            {
                rp = await _backend.StartAsync(job, l.Group, logs.Add);
            }
            catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception or IOException or HttpRequestException
                or UnauthorizedAccessException or TaskCanceledException or System.Text.Json.JsonException)
            {
                _log($"job {l.Id}: could not start: {e.Message}");
                await ReportAsync(l.Id, epoch, AgentStates.Failed, 127, $"could not start: {e.Message}");
                _launching.TryRemove(l.Id, out _);
                return;
            }

            _running[l.Id] = rp;
            _launching.TryRemove(l.Id, out _);
            await rp.Started;
            var startedMs = Clock();
            await ReportAsync(l.Id, epoch, AgentStates.Running, null, $"started: {rp.Where}", observedMs: startedMs);
            var code = await rp.Exited;
            var endedMs = Clock();
            await logs.FlushAsync(final: true);
            logs.Dispose();
            _running.TryRemove(l.Id, out _);
            if (epoch != Epoch)
            {
                return; // Fenced: the new epoch does not know this job.
            }

            // Stopped because this agent is shutting down: the job did not fail; the control plane requeues it.
            var state = _stopping && rp.StoppedBecause == StoppingReason ? AgentStates.Interrupted : code == 0 && rp.StoppedBecause is null ? AgentStates.Succeeded : AgentStates.Failed;
            await ReportAsync(l.Id, epoch, state, code, rp.StoppedBecause ?? $"exit {code}", rp.Accounting, endedMs, startedMs);
            _reports.TryRemove(l.Id, out _);
        });
    }

    /// <summary>
    /// Reports a state change, retrying transient failures; a refusal (409/404) is final. <paramref name="observedMs"/>
    /// is when this agent saw the change (the start for running, the end otherwise), so that a report delayed by an
    /// unreachable control plane is metered by when it happened, not when it got through.
    /// </summary>
    private async Task ReportAsync(long id, long epoch, string state, int? exitCode, string message, (long ElapsedSeconds, string Tres)? accounting = null,
        long? observedMs = null, long? observedStartMs = null)
    {
        var since = DateTimeOffset.UtcNow;
        for (var attempt = 0; DateTimeOffset.UtcNow - since < ShipPatience; attempt++)
        {
            try
            {
                using var resp = await _http.PostAsJsonAsync(AgentRoutes.Report(id), new AgentReport(epoch, state, exitCode, message, accounting?.ElapsedSeconds, accounting?.Tres, observedMs, observedStartMs), Web);
                if (resp.IsSuccessStatusCode || (int)resp.StatusCode is 404 or 409 or 400)
                {
                    return;
                }
            }
            catch (HttpRequestException)
            {
                // Retry below.
            }
            catch (TaskCanceledException)
            {
                // The request timed out (a busy or restarting server): the report is idempotent, so resend it.
                _log($"job {id}: report '{state}' timed out; retrying");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(5000, 250 * (attempt + 1))));
        }

        _log($"job {id}: report '{state}' not delivered within {ShipPatience.TotalMinutes:F0} min; the control plane will treat the job as lost");
    }

    private static long Clock() => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

    /// <summary>How long one chunk is retried while the control plane is unreachable (a restart, a failover).</summary>
    internal static readonly TimeSpan ShipPatience = TimeSpan.FromMinutes(10);

    /// <summary>
    /// Ships one chunk, resending while the control plane is unreachable or failing (the offset makes a resend
    /// harmless, so output is delivered once); a refusal (4xx: fenced, unknown job) is final. Meanwhile the job's
    /// output waits in the shipper's bounded buffer, and the job blocks once that is full.
    /// </summary>
    internal async Task ShipLogAsync(long id, long epoch, long offset, string data)
    {
        var started = DateTimeOffset.UtcNow;
        for (var attempt = 0; DateTimeOffset.UtcNow - started < ShipPatience; attempt++)
        {
            try
            {
                using var resp = await _http.PostAsJsonAsync(AgentRoutes.Logs(id), new AgentLog(epoch, data, offset), Web);
                if (resp.IsSuccessStatusCode || (int)resp.StatusCode is >= 400 and < 500)
                {
                    return;
                }
            }
            catch (HttpRequestException)
            {
                // Unreachable: retried below.
            }
            catch (TaskCanceledException)
            {
                // Timed out: the server may have stored it; the offset makes the resend safe.
            }
            catch (ObjectDisposedException)
            {
                return; // the agent has stopped
            }

            await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(5000, 200 * (attempt + 1))));
        }

        _log($"job {id}: output at offset {offset} could not be delivered within {ShipPatience.TotalMinutes:F0} min; dropped");
    }

    // How long jobs keep running while the control plane refuses connections (granted at registration, at most
    // ShipPatience: reports and output wait as long); past it and one more lease the agent self-fences.
    private TimeSpan _outageGrace;

    private DateTimeOffset? _downSince;
    private DateTimeOffset _lastAccepted;

    /// <summary>
    /// True when the request found nothing listening (connection refused): the control plane's host answered, its
    /// process is not running. A timeout or an unreachable host is not this: a partition looks the same from here, and
    /// a control plane on the other side of it may be counting this agent's lease.
    /// </summary>
    internal static bool IsControlPlaneDown(HttpRequestException e) =>
        e.InnerException is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.ConnectionRefused };

    private void SelfFence(string why)
    {
        foreach (var rp in _running.Values)
        {
            _backend.Stop(rp, $"agent self-fenced: {why}");
        }

        _running.Clear();
    }

    private const string StoppingReason = "agent self-fenced: agent stopping";
    private readonly ConcurrentDictionary<long, Task> _reports = new();
    private volatile bool _stopping;

    /// <summary>
    /// Stops: every running job is stopped and reported as interrupted (the control plane requeues it without
    /// charging or using an attempt), waiting up to 15 s for those reports before the connection closes.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        _stopping = true;
        foreach (var rp in _running.Values)
        {
            _backend.Stop(rp, StoppingReason);
        }

        _running.Clear();
        await Task.WhenAll(_reports.Values).WaitAsync(TimeSpan.FromSeconds(15)).ContinueWith(_ => { }, TaskScheduler.Default);
        _http.Dispose();
    }

    /// <summary>
    /// Batches a job's output: sends at most every 100 ms, in chunks of at most <see cref="ChunkChars"/> characters so
    /// every request stays under the server's body limit. At most <see cref="MaxBuffered"/> characters wait here: past
    /// that, <see cref="Add"/> returns the pending send, so the backend stops reading the job's pipe until it drains
    /// (the job then blocks on its writes instead of the agent's memory growing).
    /// </summary>
    internal sealed class LogShipper(ProviderAgent? agent, long id, long epoch, Func<long, string, Task>? ship = null) : IDisposable
    {
        /// <summary>Characters per request: even at six JSON bytes per character (\u escapes) under 1 MiB.</summary>
        public const int ChunkChars = 64 * 1024;

        /// <summary>Most characters held before the job's output is read no further.</summary>
        public const int MaxBuffered = 1024 * 1024;

        private readonly StringBuilder _buffer = new();
        private readonly Lock _gate = new();
        private readonly SemaphoreSlim _send = new(1, 1);
        private Task _pending = Task.CompletedTask;
        private long _offset;

        /// <summary>The most characters that were ever waiting at once (for tests of the bound).</summary>
        public int HighWater { get; private set; }

        public Task Add(string text)
        {
            lock (_gate)
            {
                _buffer.Append(text);
                HighWater = Math.Max(HighWater, _buffer.Length);
                if (_buffer.Length >= ChunkChars || _pending.IsCompleted)
                {
                    _pending = _buffer.Length >= ChunkChars ? Task.Run(() => FlushAsync()) : SendSoon();
                }

                return _buffer.Length >= MaxBuffered ? _pending : Task.CompletedTask;
            }
        }

        private async Task SendSoon()
        {
            await Task.Delay(100);
            await FlushAsync();
        }

        /// <summary>Sends what is buffered; <paramref name="final"/> also sends a trailing half of a surrogate pair.</summary>
        public async Task FlushAsync(bool final = false)
        {
            // One send at a time, so chunks arrive in order.
            await _send.WaitAsync();
            try
            {
                while (true)
                {
                    string data;
                    lock (_gate)
                    {
                        var n = Math.Min(_buffer.Length, ChunkChars);
                        // Never split a surrogate pair across chunks (a lone half is not valid text for the server).
                        if (n > 0 && char.IsHighSurrogate(_buffer[n - 1]) && !(final && n == _buffer.Length))
                        {
                            n--;
                        }

                        data = _buffer.ToString(0, n);
                        _buffer.Remove(0, n);
                    }

                    if (data.Length == 0)
                    {
                        return;
                    }

                    if (final && char.IsHighSurrogate(data[^1]))
                    {
                        data = data[..^1] + "\uFFFD";
                    }

                    await (ship is not null ? ship(_offset, data) : agent!.ShipLogAsync(id, epoch, _offset, data));
                    _offset += data.Length;
                }
            }
            finally
            {
                _send.Release();
            }
        }

        public void Dispose() => _send.Dispose();
    }
}
