using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Suanli.Agent;

/// <summary>What the agent needs to start one job (from the lease).</summary>
public sealed record JobLaunch(long Id, int Attempt, IReadOnlyList<string>? Command, string? Script, IReadOnlyDictionary<string, string> Env,
    decimal Cpu, long MemoryMiB, int Tasks, long TimeLimitSeconds)
{
    /// <summary>A batch script: run as a file with its own interpreter and the SLURM_* variables a script expects.</summary>
    public bool Sbatch { get; init; }

    /// <summary>The submitting tenant: the local backend runs the job as that tenant's own Unix account.</summary>
    public long TenantId { get; init; }
}

/// <summary>A job process the local backend runs.</summary>
internal sealed class LocalHandle(JobLaunch job, Process process, string key) : JobHandle(job)
{
    public Process Process { get; } = process;

    public string Key { get; } = key;
}

/// <summary>
/// Runs jobs as child processes on this machine: each in its own session and process group (setsid), inside a
/// control group with its declared CPU and memory (<see cref="ResourceLimiter"/>), in the tenant's sandbox
/// (<see cref="JobSandbox"/>: its own Unix account, namespaces, a fresh 0700 work folder per attempt), with stdout and
/// stderr streamed to a callback. Stopping a job kills its whole process group and control group.
/// </summary>
public sealed class LocalBackend(ResourceLimiter limiter, JobSandbox sandbox, string workRoot, IReadOnlyList<GroupOffer>? offer = null) : IJobBackend
{
    public ResourceLimiter Limiter { get; } = limiter;

    public JobSandbox Sandbox { get; } = sandbox;

    public string Describe => $"local processes; {Sandbox.Describe}";

    public string Isolation => Sandbox.Describe;

    public Task<IReadOnlyList<GroupOffer>?> DiscoverAsync(CancellationToken ct)
    {
        if (offer is not null)
        {
            return Task.FromResult<IReadOnlyList<GroupOffer>?>(offer);
        }

        var (cpu, mem) = MachineCapacity();
        return Task.FromResult<IReadOnlyList<GroupOffer>?>([new GroupOffer("local", cpu, mem, null, 0, 1, null)]);
    }

    public async Task<JobHandle> StartAsync(JobLaunch job, string group, Func<string, Task> output)
    {
        var account = await Sandbox.AccountAsync(job.TenantId);
        return Start(job, output, account);
    }

    public Task<string?> HealthAsync(CancellationToken ct) => Task.FromResult<string?>(null);

    public void Stop(JobHandle job, string why) => Stop((LocalHandle)job, why);

    /// <summary>Starts a job; <paramref name="output"/> receives its output in order.</summary>
    private LocalHandle Start(JobLaunch job, Func<string, Task> output, (string Name, int Uid, int Gid) account)
    {
        // Job ids repeat across control planes, and several agents may share this machine's control groups: the key
        // carries this backend's own instance id so one agent never touches another's jobs.
        var key = $"{Instance}-job-{job.Id.ToString(CultureInfo.InvariantCulture)}-{job.Attempt.ToString(CultureInfo.InvariantCulture)}";
        var dir = Path.Combine(workRoot, key);
        Sandbox.PrepareWorkDir(workRoot, dir, account.Uid, account.Gid);
        IReadOnlyList<string> argv;
        if (job.Command is { Count: > 0 } c)
        {
            argv = c;
        }
        else if (job.Script is { } script && script.StartsWith("#!", StringComparison.Ordinal))
        {
            // A script with an interpreter line runs as a file, as sbatch runs it.
            var file = Path.Combine(dir, "job-script");
            File.WriteAllText(file, script);
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }

            Sandbox.Own(file, account.Uid, account.Gid);
            argv = [file];
        }
        else
        {
            argv = ["/bin/sh", "-c", job.Script ?? "true"];
        }

        var cores = job.Cpu * job.Tasks;
        var memory = job.MemoryMiB * job.Tasks;
        var prelude = string.Join("; ", Limiter.Prelude(key, cores, memory));
        var psi = new ProcessStartInfo("/usr/bin/setsid")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = dir,
        };
        psi.ArgumentList.Add("/bin/sh");
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"{prelude}; exec \"$@\"");
        psi.ArgumentList.Add("suanli-job");
        foreach (var a in Sandbox.Wrap(dir, argv, account.Uid, account.Gid))
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment.Clear();
        psi.Environment["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        psi.Environment["HOME"] = dir;
        psi.Environment["USER"] = account.Name;
        psi.Environment["LOGNAME"] = account.Name;
        psi.Environment["SUANLI_JOB_ID"] = job.Id.ToString(CultureInfo.InvariantCulture);
        psi.Environment["SUANLI_ATTEMPT"] = job.Attempt.ToString(CultureInfo.InvariantCulture);
        psi.Environment["SUANLI_TASKS"] = job.Tasks.ToString(CultureInfo.InvariantCulture);
        psi.Environment["SUANLI_PREEMPT_FILE"] = Path.Combine(dir, PreemptFile);
        if (job.Sbatch)
        {
            var id = job.Id.ToString(CultureInfo.InvariantCulture);
            psi.Environment["SLURM_JOB_ID"] = id;
            psi.Environment["SLURM_JOBID"] = id;
            psi.Environment["SLURM_SUBMIT_DIR"] = dir;
            psi.Environment["SLURM_CLUSTER_NAME"] = "suanli-local";
            psi.Environment["SLURM_JOB_NODELIST"] = Environment.MachineName;
            psi.Environment["SLURMD_NODENAME"] = Environment.MachineName;
            psi.Environment["SLURM_RESTART_COUNT"] = (job.Attempt - 1).ToString(CultureInfo.InvariantCulture);
            if (job.Env.ContainsKey("SLURM_ARRAY_TASK_ID") && !job.Env.ContainsKey("SLURM_ARRAY_JOB_ID"))
            {
                psi.Environment["SLURM_ARRAY_JOB_ID"] = id; // the array's first element is its own array job
            }
        }

        foreach (var (k, v) in job.Env)
        {
            psi.Environment[k] = v;
        }

        psi.Environment["SUANLI_JOB_ID"] = job.Id.ToString(CultureInfo.InvariantCulture); // the reaper's marker: never the job's to change

        var p = Process.Start(psi) ?? throw new InvalidOperationException($"job {job.Id}: the process did not start");
        p.StandardInput.Close();
        RecordRunning(key, job.Id, p.Id);
        var rp = new LocalHandle(job, p, key) { Where = $"{Environment.MachineName} pid {p.Id}" };
        var gate = new SemaphoreSlim(1, 1);
        async Task Pump(StreamReader r)
        {
            var buf = new char[8192];
            int n;
            while ((n = await r.ReadAsync(buf)) > 0)
            {
                await gate.WaitAsync();
                try
                {
                    await output(new string(buf, 0, n));
                }
                finally
                {
                    gate.Release();
                }
            }
        }

        var outTask = Pump(p.StandardOutput);
        var errTask = Pump(p.StandardError);
        rp.Exited = Task.Run(async () =>
        {
            using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(job.TimeLimitSeconds));
            try
            {
                await p.WaitForExitAsync(limit.Token);
            }
            catch (OperationCanceledException)
            {
                Stop(rp, $"time limit of {job.TimeLimitSeconds} s reached");
                await p.WaitForExitAsync();
            }

            // Kill what the job left behind in its group before reading the last output.
            KillGroup(rp);
            await Task.WhenAll(outTask, errTask).WaitAsync(TimeSpan.FromSeconds(5)).ContinueWith(_ => { }, TaskScheduler.Default);
            Limiter.Cleanup(key);
            TryDelete(dir);
            File.Delete(Path.Combine(StateDir, key));
            return p.ExitCode;
        });
        return rp;
    }

    private string StateDir => Path.Combine(workRoot, ".running");

    private string? _instance;

    /// <summary>A random id of this work folder, kept in it so a restarted agent recognises its predecessor's jobs.</summary>
    private string Instance
    {
        get
        {
            if (_instance is not null)
            {
                return _instance;
            }

            Directory.CreateDirectory(workRoot);
            var file = Path.Combine(workRoot, ".instance");
            if (!File.Exists(file))
            {
                File.WriteAllText(file, Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(4)).ToLowerInvariant());
            }

            return _instance = File.ReadAllText(file).Trim();
        }
    }

    // One file per live job: "job id, process group id". A restarted agent reads them to stop what its predecessor left.
    private void RecordRunning(string key, long jobId, int pgid)
    {
        Directory.CreateDirectory(StateDir);
        File.WriteAllText(Path.Combine(StateDir, key), $"{jobId.ToString(CultureInfo.InvariantCulture)} {pgid.ToString(CultureInfo.InvariantCulture)}");
    }

    /// <summary>
    /// Stops the jobs a previous agent process left running in this work folder (it was killed, so nobody reaps them
    /// and the server has already treated them as lost). A process is killed only when it is in the recorded process
    /// group and carries that job's SUANLI_JOB_ID, so a recycled process id is never hit. Returns how many jobs were
    /// found.
    /// </summary>
    public int ReapLeftovers()
    {
        if (!Directory.Exists(StateDir))
        {
            return 0;
        }

        var found = 0;
        foreach (var file in Directory.GetFiles(StateDir))
        {
            var parts = File.ReadAllText(file).Split(' ');
            if (parts.Length == 2 && long.TryParse(parts[0], CultureInfo.InvariantCulture, out var jobId) && int.TryParse(parts[1], CultureInfo.InvariantCulture, out var pgid))
            {
                found++;
                foreach (var pid in ProcessesOf(pgid, jobId))
                {
                    _ = Native.kill(pid, Native.SIGKILL);
                }

                Limiter.Cleanup(Path.GetFileName(file));
            }

            File.Delete(file);
        }

        return found;
    }

    private static IEnumerable<int> ProcessesOf(int pgid, long jobId)
    {
        var marker = $"SUANLI_JOB_ID={jobId.ToString(CultureInfo.InvariantCulture)}\0";
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), CultureInfo.InvariantCulture, out var pid))
            {
                continue;
            }

            string stat, environ;
            try
            {
                stat = File.ReadAllText(Path.Combine(dir, "stat"));
                environ = File.ReadAllText(Path.Combine(dir, "environ"));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue;
            }

            // Fields after the command name in parentheses: state, ppid, pgrp, ...
            var rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            if (rest.Length > 2 && int.TryParse(rest[2], CultureInfo.InvariantCulture, out var group) && group == pgid
                && ("\0" + environ).Contains("\0" + marker, StringComparison.Ordinal))
            {
                yield return pid;
            }
        }
    }

    /// <summary>The file a spot job finds in its working folder once it is on notice (its first line: seconds left, then the reason).</summary>
    public const string PreemptFile = ".suanli-preempt";

    /// <summary>Writes the notice file, then sends SIGUSR1 to the job's process group.</summary>
    public async Task<bool> NotifyAsync(JobHandle job, int seconds, string reason)
    {
        if (job is not LocalHandle rp)
        {
            return false;
        }

        try
        {
            // The folder belongs to the job's account: whatever it left at this name (a symbolic link to a file of the
            // agent's, say) is removed, and the notice is created with O_EXCL, which never follows a link.
            var file = Path.Combine(rp.Process.StartInfo.WorkingDirectory, PreemptFile);
            File.Delete(file);
            await using (var f = new FileStream(file, FileMode.CreateNew, FileAccess.Write))
            {
                await f.WriteAsync(Encoding.UTF8.GetBytes(IJobBackend.NoticeText(seconds, reason)));
            }

            return SignalJob(rp.Process.Id, Native.SIGUSR1, Sandbox.Bubblewrap) > 0;
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>
    /// Sends <paramref name="signal"/> to the job's own processes: every member of its process group except those running
    /// the sandbox's bubblewrap binary (<paramref name="bubblewrap"/>, recognised by the executable, whatever it is
    /// called). bubblewrap does not pass signals on, and its default action for SIGUSR1 is to die — which ended the job
    /// at once instead of giving it its notice. A process forked during the scan may miss the signal (the notice file
    /// tells it too). Returns how many processes were signalled.
    /// </summary>
    private static int SignalJob(int pgid, int signal, string? bubblewrap)
    {
        var sent = 0;
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
            {
                continue;
            }

            string stat;
            try
            {
                stat = File.ReadAllText(Path.Combine(dir, "stat"));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue; // ended meanwhile
            }

            // "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses, so fields count from the last ')'.
            var open = stat.IndexOf('(', StringComparison.Ordinal);
            var close = stat.LastIndexOf(')');
            if (open < 0 || close < open)
            {
                continue;
            }

            var fields = stat[(close + 2)..].Split(' ');
            if (fields.Length > 2 && int.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out var group) && group == pgid
                && !RunsBinary(dir, bubblewrap) && Native.kill(pid, signal) == 0)
            {
                sent++;
            }
        }

        return sent;
    }

    private static bool RunsBinary(string procDir, string? binary)
    {
        if (binary is null)
        {
            return false;
        }

        try
        {
            return new FileInfo(Path.Combine(procDir, "exe")).LinkTarget is { } exe && exe == binary;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false; // ended meanwhile
        }
    }

    /// <summary>Stops a job's whole process tree (process group and control group).</summary>
    private void Stop(LocalHandle rp, string why)
    {
        rp.StoppedBecause ??= why;
        KillGroup(rp);
        Limiter.Cleanup(rp.Key);
    }

    private static void KillGroup(LocalHandle rp)
    {
        try
        {
            // setsid made the job a session and group leader: its pid is the group id.
            _ = Native.kill(-rp.Process.Id, Native.SIGKILL);
        }
        catch (InvalidOperationException)
        {
            // Never started.
        }
    }

    internal static void TryDelete(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
            // Left for the operator; harmless.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    /// <summary>This machine's capacity: cores and memory (MiB).</summary>
    public static (long MilliCpu, long MemoryMiB) MachineCapacity()
    {
        var mem = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1024 * 1024);
        try
        {
            var line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
            if (line is not null && long.TryParse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture, out var kb))
            {
                mem = kb / 1024;
            }
        }
        catch (IOException)
        {
        }

        return (Environment.ProcessorCount * 1000L, mem);
    }

    internal static string Utf8Clip(string s, int maxBytes) =>
        Encoding.UTF8.GetByteCount(s) <= maxBytes ? s : s[..Math.Min(s.Length, maxBytes / 3)];
}
