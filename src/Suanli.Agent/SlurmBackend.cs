using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace Suanli.Agent;

/// <summary>A Slurm job as the agent needs it, whatever the REST API version.</summary>
public sealed record SlurmJobStatus(long Id, string State, int ExitStatus, int Signal, string? Reason, long StartTime = 0, long EndTime = 0, string? Tres = null);

/// <summary>One partition's nodes, as discovered.</summary>
public sealed record SlurmPartition(string Name, int Nodes, long MilliCpu, long MemoryMiB, string? GpuType, int Gpus);

/// <summary>What the agent submits: the script unchanged plus the job properties translated from the Suanli spec.</summary>
public sealed record SlurmSubmit(string Script, string Name, string Partition, int Tasks, int CpusPerTask, long MemoryPerCpuMiB, long TimeLimitMinutes,
    string WorkDir, string Output, IReadOnlyDictionary<string, string> Environment);

/// <summary>
/// slurmrestd's API changes with every Slurm release (v0.0.38 in 22.05, v0.0.39 in 23.02, …). Everything
/// version-specific sits behind this adapter; adding a release means one more implementation (docs/providers-slurm.md).
/// </summary>
public interface ISlurmApi
{
    string Version { get; }

    Task<IReadOnlyList<SlurmPartition>> PartitionsAsync(CancellationToken ct);

    Task<long> SubmitAsync(SlurmSubmit job, CancellationToken ct);

    Task<SlurmJobStatus?> JobAsync(long id, CancellationToken ct);

    Task CancelAsync(long id, CancellationToken ct);

    /// <summary>Sends a signal (e.g. "SIGUSR1") to the job's batch shell and steps; null when sent, else Slurm's error.</summary>
    Task<string?> SignalAsync(long id, string signal, CancellationToken ct);

    /// <summary>Null when the controller answers UP, else what is wrong.</summary>
    Task<string?> PingAsync(CancellationToken ct);
}

/// <summary>slurmrestd <c>openapi/v0.0.38</c> (Slurm 22.05, Debian 12).</summary>
public sealed class SlurmApiV0038(HttpClient http) : ISlurmApi
{
    private const string Base = "/slurm/v0.0.38";

    public string Version => "v0.0.38";

    /// <summary>An HTTP client for slurmrestd at <c>unix:/path</c> (rest_auth/local) or an http(s) URL.</summary>
    public static HttpClient Client(string endpoint)
    {
        if (endpoint.StartsWith("unix:", StringComparison.Ordinal))
        {
            var path = endpoint["unix:".Length..];
            var handler = new SocketsHttpHandler
            {
                ConnectCallback = async (_, ct) =>
                {
                    var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    try
                    {
                        await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
                        return new NetworkStream(socket, ownsSocket: true);
                    }
                    catch
                    {
                        socket.Dispose();
                        throw;
                    }
                },
            };
            return new HttpClient(handler) { BaseAddress = new Uri("http://slurmrestd"), Timeout = TimeSpan.FromSeconds(30) };
        }

        return new HttpClient { BaseAddress = new Uri(endpoint), Timeout = TimeSpan.FromSeconds(30) };
    }

    private static async Task<JsonNode> Json(HttpResponseMessage resp, CancellationToken ct)
    {
        var text = await resp.Content.ReadAsStringAsync(ct);
        if (!text.TrimStart().StartsWith('{'))
        {
            throw new InvalidOperationException($"slurmrestd answered {(int)resp.StatusCode}: {text.Trim()}");
        }

        var node = JsonNode.Parse(text) ?? new JsonObject();
        if (node["errors"] is JsonArray { Count: > 0 } errors)
        {
            throw new InvalidOperationException("slurmrestd: " + string.Join("; ", errors.Select(e => $"{e?["error"]} ({e?["error_number"]})")));
        }

        resp.EnsureSuccessStatusCode();
        return node;
    }

    public async Task<IReadOnlyList<SlurmPartition>> PartitionsAsync(CancellationToken ct)
    {
        using var pr = await http.GetAsync($"{Base}/partitions", ct);
        var partitions = await Json(pr, ct);
        using var nr = await http.GetAsync($"{Base}/nodes", ct);
        var nodes = (await Json(nr, ct))["nodes"]!.AsArray();
        var result = new List<SlurmPartition>();
        foreach (var p in partitions["partitions"]!.AsArray())
        {
            var name = p!["name"]!.GetValue<string>();
            var members = nodes.Where(n => n!["partitions"]!.AsArray().Any(x => x!.GetValue<string>() == name)).ToList();
            if (members.Count == 0)
            {
                continue;
            }

            // A group is identical nodes: take the smallest node so every node can run what the group admits.
            var cpus = members.Min(n => n!["cpus"]!.GetValue<long>());
            var mem = members.Min(n => n!["real_memory"]!.GetValue<long>());
            var (type, gpus) = members.Select(n => ParseGres(n!["gres"]?.GetValue<string>())).MinBy(g => g.Count);
            result.Add(new SlurmPartition(name, members.Count, cpus * 1000, mem, type, gpus));
        }

        return result;
    }

    /// <summary>Reads "gpu:A100:4(S:0-1),..." into a model and a count (null, 0 when there is no GPU GRES).</summary>
    public static (string? Type, int Count) ParseGres(string? gres)
    {
        foreach (var item in (gres ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            var p = item.Split('(')[0].Split(':');
            if (p[0] == "gpu" && p.Length >= 2 && int.TryParse(p[^1], NumberStyles.None, CultureInfo.InvariantCulture, out var n))
            {
                return (p.Length == 3 ? p[1] : null, n);
            }
        }

        return (null, 0);
    }

    public async Task<long> SubmitAsync(SlurmSubmit job, CancellationToken ct)
    {
        var env = new JsonObject();
        foreach (var (k, v) in job.Environment)
        {
            env[k] = v;
        }

        var body = new JsonObject
        {
            ["script"] = job.Script,
            ["job"] = new JsonObject
            {
                ["name"] = job.Name,
                ["partition"] = job.Partition,
                ["tasks"] = job.Tasks,
                ["cpus_per_task"] = job.CpusPerTask,
                ["memory_per_cpu"] = job.MemoryPerCpuMiB,
                ["time_limit"] = job.TimeLimitMinutes,
                ["current_working_directory"] = job.WorkDir,
                ["standard_output"] = job.Output,
                ["standard_error"] = job.Output,
                ["environment"] = env,
            },
        };
        // slurmrestd 22.05 refuses a media type with parameters ("application/json; charset=utf-8").
        using var content = new StringContent(body.ToJsonString(), Encoding.UTF8);
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        using var resp = await http.PostAsync($"{Base}/job/submit", content, ct);
        return (await Json(resp, ct))["job_id"]!.GetValue<long>();
    }

    public async Task<SlurmJobStatus?> JobAsync(long id, CancellationToken ct)
    {
        using var resp = await http.GetAsync($"{Base}/job/{id.ToString(CultureInfo.InvariantCulture)}", ct);
        if (resp.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
            return null;
        }

        var jobs = (await Json(resp, ct))["jobs"]?.AsArray();
        if (jobs is null || jobs.Count == 0)
        {
            return null;
        }

        var j = jobs[0]!;
        var wait = j["exit_code"]?.GetValue<int>() ?? 0;
        return new SlurmJobStatus(id, j["job_state"]!.GetValue<string>(), (wait >> 8) & 0xff, wait & 0x7f, j["state_reason"]?.GetValue<string>(),
            j["start_time"]?.GetValue<long>() ?? 0, j["end_time"]?.GetValue<long>() ?? 0, j["tres_alloc_str"]?.GetValue<string>());
    }

    public async Task<string?> PingAsync(CancellationToken ct)
    {
        using var resp = await http.GetAsync($"{Base}/ping", ct);
        var text = await resp.Content.ReadAsStringAsync(ct);
        var node = text.TrimStart().StartsWith('{') ? JsonNode.Parse(text) : null;
        var pings = node?["pings"] as JsonArray;
        if (pings is { Count: > 0 } && pings.All(p => p?["ping"]?.GetValue<string>() == "UP"))
        {
            return null;
        }

        return node?["errors"] is JsonArray { Count: > 0 } errors
            ? "slurmctld: " + string.Join("; ", errors.Select(e => e?["error"]?.ToString()))
            : $"slurmctld does not answer UP ({(int)resp.StatusCode})";
    }

    public async Task CancelAsync(long id, CancellationToken ct)
    {
        using var resp = await http.DeleteAsync($"{Base}/job/{id.ToString(CultureInfo.InvariantCulture)}", ct);
        await resp.Content.ReadAsStringAsync(ct);
    }

    public async Task<string?> SignalAsync(long id, string signal, CancellationToken ct)
    {
        // v0.0.38's job DELETE takes the signal to send instead of cancelling (as scancel --signal).
        using var resp = await http.DeleteAsync($"{Base}/job/{id.ToString(CultureInfo.InvariantCulture)}?signal={Uri.EscapeDataString(signal)}", ct);
        var text = await resp.Content.ReadAsStringAsync(ct);
        var errors = text.TrimStart().StartsWith('{') ? JsonNode.Parse(text)?["errors"] as JsonArray : null;
        return errors is { Count: > 0 } ? string.Join("; ", errors.Select(e => e?["error"]?.ToString())) : resp.IsSuccessStatusCode ? null : $"HTTP {(int)resp.StatusCode}";
    }
}

/// <summary>
/// Runs jobs on a Slurm cluster through slurmrestd: discovers partitions as node groups, submits the job's script
/// unchanged (a plain command becomes a two-line script) with the resources translated into job properties, follows
/// the job's state and output file, and cancels through the API. Output files live in a folder the agent and the
/// cluster's nodes share (here: this machine).
/// </summary>
public sealed class SlurmBackend(ISlurmApi api, string outputDir, string cluster, decimal? pricePerNodeHour = null) : IJobBackend
{
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(500);

    public string Describe => $"Slurm cluster {cluster} via slurmrestd {api.Version}";

    public async Task<IReadOnlyList<GroupOffer>?> DiscoverAsync(CancellationToken ct) =>
        [.. (await api.PartitionsAsync(ct)).Select(p => new GroupOffer(p.Name, p.MilliCpu, p.MemoryMiB, p.GpuType, p.Gpus, p.Nodes, pricePerNodeHour))];

    private sealed class SlurmHandle(JobLaunch job, long slurmId, string output) : JobHandle(job)
    {
        public long SlurmId { get; } = slurmId;

        public string Output { get; } = output;

        public TaskCompletionSource StartedSource { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    public async Task<JobHandle> StartAsync(JobLaunch job, string group, Func<string, Task> output)
    {
        Directory.CreateDirectory(outputDir);
        var file = Path.Combine(outputDir, $"suanli-{job.Id.ToString(CultureInfo.InvariantCulture)}-{job.Attempt.ToString(CultureInfo.InvariantCulture)}.out");
        var script = job.Script is { } s && s.StartsWith("#!", StringComparison.Ordinal) ? s
            : job.Script is { } sh ? "#!/bin/sh\n" + sh
            : "#!/bin/sh\nexec " + string.Join(' ', job.Command!.Select(ResourceLimiter.Q)) + "\n";
        var env = new Dictionary<string, string>(job.Env, StringComparer.Ordinal)
        {
            ["PATH"] = "/usr/local/bin:/usr/bin:/bin",
            ["SUANLI_JOB_ID"] = job.Id.ToString(CultureInfo.InvariantCulture),
            ["SUANLI_ATTEMPT"] = job.Attempt.ToString(CultureInfo.InvariantCulture),
            ["SUANLI_PREEMPT_FILE"] = NoticeFile(job),
        };
        var cpus = (int)Math.Ceiling(job.Cpu);
        var submit = new SlurmSubmit(script, $"suanli-{job.Id.ToString(CultureInfo.InvariantCulture)}", group, job.Tasks, Math.Max(1, cpus),
            Math.Max(1, (long)Math.Ceiling(job.MemoryMiB / (double)Math.Max(1, cpus))), Math.Max(1, (job.TimeLimitSeconds + 59) / 60), outputDir, file, env);
        var id = await api.SubmitAsync(submit, CancellationToken.None);
        Record(job, id);
        var h = new SlurmHandle(job, id, file) { Where = $"Slurm job {id.ToString(CultureInfo.InvariantCulture)} on {cluster}" };
        h.Started = h.StartedSource.Task;
        h.Exited = Follow(h, output);
        return h;
    }

    private async Task<int> Follow(SlurmHandle h, Func<string, Task> output)
    {
        long read = 0;
        var misses = 0;
        while (true)
        {
            await Task.Delay(Poll);
            SlurmJobStatus? st;
            try
            {
                st = await api.JobAsync(h.SlurmId, CancellationToken.None);
            }
            catch (HttpRequestException)
            {
                // slurmrestd unreachable: keep trying; the agent's lease decides how long the job stays ours.
                continue;
            }

            read = await Tail(h.Output, read, output);
            if (st is null)
            {
                if (++misses < 10)
                {
                    continue;
                }

                h.StoppedBecause ??= "the job vanished from Slurm";
                h.StartedSource.TrySetResult();
                Forget(h.Job);
                return 1;
            }

            if (st.State is not ("PENDING" or "CONFIGURING" or "REQUEUED" or "SUSPENDED"))
            {
                h.StartedSource.TrySetResult();
            }

            if (st.State is "PENDING" or "CONFIGURING" or "RUNNING" or "COMPLETING" or "REQUEUED" or "SUSPENDED")
            {
                continue;
            }

            await Task.Delay(200);
            await Tail(h.Output, read, output);
            if (st.StartTime > 0 && st.EndTime >= st.StartTime)
            {
                h.Accounting = (st.EndTime - st.StartTime, st.Tres ?? "");
            }

            Forget(h.Job);
            TryDelete(h.Output);
            TryDelete(NoticeFile(h.Job));
            return st.State switch
            {
                "COMPLETED" => st.ExitStatus,
                "TIMEOUT" => Stopped(h, $"time limit of {h.Job.TimeLimitSeconds} s reached (Slurm TIMEOUT)", 124),
                "CANCELLED" => Stopped(h, "cancelled in Slurm", 143),
                "OUT_OF_MEMORY" => Stopped(h, "out of memory (Slurm OUT_OF_MEMORY)", 137),
                "FAILED" => st.ExitStatus != 0 ? st.ExitStatus : Stopped(h, $"Slurm FAILED: {st.Reason}", 1),
                _ => Stopped(h, $"Slurm {st.State}: {st.Reason}", 1),
            };
        }
    }

    private static int Stopped(JobHandle h, string why, int code)
    {
        h.StoppedBecause ??= why;
        return code;
    }

    private static async Task<long> Tail(string file, long from, Func<string, Task> output)
    {
        try
        {
            await using var f = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            if (f.Length <= from)
            {
                return from;
            }

            f.Seek(from, SeekOrigin.Begin);
            var buffer = new byte[f.Length - from];
            var n = await f.ReadAsync(buffer);
            await output(Encoding.UTF8.GetString(buffer, 0, n));
            return from + n;
        }
        catch (FileNotFoundException)
        {
            return from;
        }
    }

    private string NoticeFile(JobLaunch job) =>
        Path.Combine(outputDir, $"suanli-{job.Id.ToString(CultureInfo.InvariantCulture)}-{job.Attempt.ToString(CultureInfo.InvariantCulture)}.preempt");

    /// <summary>
    /// Writes the notice file in the shared output folder, then signals SIGUSR1 through slurmrestd; Slurm refuses a
    /// signal while a job is still starting ("try again later"), so it retries for a few seconds.
    /// </summary>
    public async Task<bool> NotifyAsync(JobHandle job, int seconds, string reason)
    {
        try
        {
            await File.WriteAllTextAsync(NoticeFile(job.Job), IJobBackend.NoticeText(seconds, reason));
        }
        catch (IOException)
        {
            return false;
        }

        for (var attempt = 0; attempt < 20; attempt++)
        {
            try
            {
                if (await api.SignalAsync(((SlurmHandle)job).SlurmId, "SIGUSR1", CancellationToken.None) is null)
                {
                    return true;
                }
            }
            catch (HttpRequestException)
            {
                // slurmrestd unreachable: try again below.
            }

            await Task.Delay(250);
        }

        return false;
    }

    public void Stop(JobHandle job, string why)
    {
        job.StoppedBecause ??= why;
        try
        {
            api.CancelAsync(((SlurmHandle)job).SlurmId, CancellationToken.None).GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or InvalidOperationException)
        {
            // The cluster is unreachable; the job id stays recorded and a restarted agent cancels it.
        }
    }

    public async Task<string?> HealthAsync(CancellationToken ct)
    {
        try
        {
            return await api.PingAsync(ct);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or System.Text.Json.JsonException)
        {
            return $"slurmrestd unreachable: {e.Message}";
        }
    }

    private string StateDir => Path.Combine(outputDir, ".submitted");

    private void Record(JobLaunch job, long slurmId)
    {
        Directory.CreateDirectory(StateDir);
        File.WriteAllText(Path.Combine(StateDir, $"{job.Id.ToString(CultureInfo.InvariantCulture)}-{job.Attempt.ToString(CultureInfo.InvariantCulture)}"), slurmId.ToString(CultureInfo.InvariantCulture));
    }

    private void Forget(JobLaunch job) => TryDelete(Path.Combine(StateDir, $"{job.Id.ToString(CultureInfo.InvariantCulture)}-{job.Attempt.ToString(CultureInfo.InvariantCulture)}"));

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
    }

    public int ReapLeftovers()
    {
        if (!Directory.Exists(StateDir))
        {
            return 0;
        }

        var n = 0;
        foreach (var file in Directory.GetFiles(StateDir))
        {
            if (long.TryParse(File.ReadAllText(file), NumberStyles.None, CultureInfo.InvariantCulture, out var id))
            {
                api.CancelAsync(id, CancellationToken.None).GetAwaiter().GetResult();
                n++;
            }

            File.Delete(file);
        }

        return n;
    }
}
