using System.Globalization;
using System.Runtime.InteropServices;

namespace Suanli.Agent;

/// <summary>
/// Keeps a job's processes within its declared CPU and memory. Linux control groups when this machine lets the agent
/// create them (v2 unified hierarchy, or v1 memory + cpu controllers), else <c>ulimit -v</c> (address space only; CPU
/// is then not capped, which <see cref="Describe"/> says).
/// </summary>
public abstract class ResourceLimiter
{
    /// <summary>What this limiter enforces, for the agent's start-up line.</summary>
    public abstract string Describe { get; }

    /// <summary>True when every process of a job is held in a control group the job cannot leave, so all can be killed.</summary>
    public virtual bool Contains => true;

    /// <summary>Most processes and threads one job may have at once (a fork bomb stops there).</summary>
    public const int MaxTasks = 4096;

    /// <summary>Shell lines run by the job's wrapper shell (as $$) before it execs the job.</summary>
    public abstract IReadOnlyList<string> Prelude(string jobKey, decimal cpu, long memoryMiB);

    /// <summary>Kills every process still in the job's group and removes the group.</summary>
    public abstract void Cleanup(string jobKey);

    /// <summary>Picks the strongest limiter this machine allows.</summary>
    public static ResourceLimiter Detect()
    {
        if (CgroupV2Limiter.TryCreate() is { } v2)
        {
            return v2;
        }

        if (CgroupV1Limiter.TryCreate() is { } v1)
        {
            return v1;
        }

        return new UlimitLimiter();
    }

    internal static string Q(string s) => "'" + s.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    internal static void KillPids(string procsFile)
    {
        try
        {
            foreach (var line in File.ReadAllLines(procsFile))
            {
                if (int.TryParse(line, NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
                {
                    _ = Native.kill(pid, Native.SIGKILL);
                }
            }
        }
        catch (IOException)
        {
            // Group already gone.
        }
    }

    internal static bool TryWrite(string file, string text)
    {
        try
        {
            File.WriteAllText(file, text);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    internal static void RemoveDir(string dir)
    {
        for (var i = 0; i < 20 && Directory.Exists(dir); i++)
        {
            try
            {
                Directory.Delete(dir);
            }
            catch (IOException)
            {
                Thread.Sleep(25);
            }
        }
    }
}

/// <summary>cgroup v2: memory.max and cpu.max in a child of a delegated group; cgroup.kill stops the whole tree.</summary>
public sealed class CgroupV2Limiter(string root) : ResourceLimiter
{
    public override string Describe => $"cgroup v2 at {root} (memory.max, cpu.max)";

    public static CgroupV2Limiter? TryCreate()
    {
        var root = "/sys/fs/cgroup/suanli";
        try
        {
            if (!File.Exists("/sys/fs/cgroup/cgroup.controllers"))
            {
                return null;
            }

            Directory.CreateDirectory(root);
            File.WriteAllText("/sys/fs/cgroup/cgroup.subtree_control", "+memory +cpu");
            File.WriteAllText(Path.Combine(root, "cgroup.subtree_control"), "+memory +cpu");
            TryWrite("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
            TryWrite(Path.Combine(root, "cgroup.subtree_control"), "+pids");
            return new CgroupV2Limiter(root);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    public override IReadOnlyList<string> Prelude(string jobKey, decimal cpu, long memoryMiB)
    {
        var dir = Path.Combine(root, jobKey);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "memory.max"), (memoryMiB * 1024 * 1024).ToString(CultureInfo.InvariantCulture));
        File.WriteAllText(Path.Combine(dir, "cpu.max"), $"{(long)(cpu * 100_000)} 100000");
        TryWrite(Path.Combine(dir, "pids.max"), MaxTasks.ToString(CultureInfo.InvariantCulture));
        return [$"echo $$ > {Q(Path.Combine(dir, "cgroup.procs"))}"];
    }

    public override void Cleanup(string jobKey)
    {
        var dir = Path.Combine(root, jobKey);
        try
        {
            File.WriteAllText(Path.Combine(dir, "cgroup.kill"), "1");
        }
        catch (IOException)
        {
            KillPids(Path.Combine(dir, "cgroup.procs"));
        }

        RemoveDir(dir);
    }
}

/// <summary>
/// cgroup v1: memory.limit_in_bytes and cpu.cfs_quota_us in per-job groups of the memory and cpu hierarchies, pids.max
/// in the pids hierarchy, and a freezer group so that stopping a job freezes every process first and then kills them
/// all: nothing can fork out of the way meanwhile.
/// </summary>
public sealed class CgroupV1Limiter(string memory, string cpuRoot, string? freezer, string? pids) : ResourceLimiter
{
    public override string Describe => $"cgroup v1 ({memory}: memory.limit_in_bytes; {cpuRoot}: cpu.cfs_quota_us"
        + (pids is null ? "" : $"; {pids}: pids.max {MaxTasks}") + (freezer is null ? "; no freezer: processes killed in rounds" : $"; {freezer}: freeze and kill") + ")";

    public override bool Contains => freezer is not null;

    public static CgroupV1Limiter? TryCreate()
    {
        try
        {
            if (!Directory.Exists("/sys/fs/cgroup/memory") || !Directory.Exists("/sys/fs/cgroup/cpu"))
            {
                return null;
            }

            var mem = "/sys/fs/cgroup/memory/suanli";
            var cpu = "/sys/fs/cgroup/cpu/suanli";
            Directory.CreateDirectory(mem);
            Directory.CreateDirectory(cpu);
            var probe = Path.Combine(mem, "probe-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
            Directory.CreateDirectory(probe);
            var ok = File.Exists(Path.Combine(probe, "memory.limit_in_bytes"));
            RemoveDir(probe);
            return ok ? new CgroupV1Limiter(mem, cpu, Optional("/sys/fs/cgroup/freezer", "freezer.state"), Optional("/sys/fs/cgroup/pids", "pids.max")) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string? Optional(string hierarchy, string probeFile)
    {
        if (!Directory.Exists(hierarchy))
        {
            return null;
        }

        try
        {
            var root = Path.Combine(hierarchy, "suanli");
            Directory.CreateDirectory(root);
            var probe = Path.Combine(root, "probe-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
            Directory.CreateDirectory(probe);
            var ok = File.Exists(Path.Combine(probe, probeFile));
            RemoveDir(probe);
            return ok ? root : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private IEnumerable<string> Groups(string jobKey)
    {
        yield return Path.Combine(memory, jobKey);
        yield return Path.Combine(cpuRoot, jobKey);
        if (freezer is not null)
        {
            yield return Path.Combine(freezer, jobKey);
        }

        if (pids is not null)
        {
            yield return Path.Combine(pids, jobKey);
        }
    }

    public override IReadOnlyList<string> Prelude(string jobKey, decimal cpu, long memoryMiB)
    {
        foreach (var g in Groups(jobKey))
        {
            Directory.CreateDirectory(g);
        }

        var m = Path.Combine(memory, jobKey);
        var c = Path.Combine(cpuRoot, jobKey);
        File.WriteAllText(Path.Combine(m, "memory.limit_in_bytes"), (memoryMiB * 1024 * 1024).ToString(CultureInfo.InvariantCulture));
        TryWrite(Path.Combine(m, "memory.memsw.limit_in_bytes"), (memoryMiB * 1024 * 1024).ToString(CultureInfo.InvariantCulture));
        File.WriteAllText(Path.Combine(c, "cpu.cfs_period_us"), "100000");
        File.WriteAllText(Path.Combine(c, "cpu.cfs_quota_us"), ((long)(cpu * 100_000)).ToString(CultureInfo.InvariantCulture));
        if (pids is not null)
        {
            File.WriteAllText(Path.Combine(pids, jobKey, "pids.max"), MaxTasks.ToString(CultureInfo.InvariantCulture));
        }

        return [.. Groups(jobKey).Select(g => $"echo $$ > {Q(Path.Combine(g, "cgroup.procs"))}")];
    }

    public override void Cleanup(string jobKey)
    {
        var m = Path.Combine(memory, jobKey);
        var c = Path.Combine(cpuRoot, jobKey);
        if (freezer is not null && Directory.Exists(Path.Combine(freezer, jobKey)))
        {
            // Freeze, kill every member while none can run, thaw so the kills are delivered.
            var f = Path.Combine(freezer, jobKey);
            if (TryWrite(Path.Combine(f, "freezer.state"), "FROZEN"))
            {
                for (var i = 0; i < 100 && !ReadState(f).StartsWith("FROZEN", StringComparison.Ordinal); i++)
                {
                    Thread.Sleep(10);
                }
            }

            KillPids(Path.Combine(f, "cgroup.procs"));
            TryWrite(Path.Combine(f, "freezer.state"), "THAWED");
            for (var i = 0; i < 200 && HasMembers(Path.Combine(f, "cgroup.procs")); i++)
            {
                Thread.Sleep(10);
            }
        }

        for (var i = 0; i < 3; i++)
        {
            KillPids(Path.Combine(m, "cgroup.procs"));
            KillPids(Path.Combine(c, "cgroup.procs"));
        }

        foreach (var g in Groups(jobKey))
        {
            RemoveDir(g);
        }
    }

    private static string ReadState(string dir)
    {
        try
        {
            return File.ReadAllText(Path.Combine(dir, "freezer.state")).Trim();
        }
        catch (IOException)
        {
            return "FROZEN";
        }
    }

    private static bool HasMembers(string procs)
    {
        try
        {
            return File.ReadAllText(procs).Trim().Length > 0;
        }
        catch (IOException)
        {
            return false;
        }
    }
}

/// <summary>Fallback: address-space limit with ulimit -v; no CPU cap.</summary>
public sealed class UlimitLimiter : ResourceLimiter
{
    public override string Describe => "ulimit -v (address space); CPU not capped: no writable cgroup hierarchy";

    public override bool Contains => false;

    public override IReadOnlyList<string> Prelude(string jobKey, decimal cpu, long memoryMiB) =>
        [$"ulimit -v {(memoryMiB * 1024).ToString(CultureInfo.InvariantCulture)} 2>/dev/null || true"];

    public override void Cleanup(string jobKey)
    {
    }
}

/// <summary>libc calls .NET has no managed form of: signalling a whole process group.</summary>
internal static partial class Native
{
    public const int SIGKILL = 9;
    public const int SIGUSR1 = 10;
    public const int SIGTERM = 15;

    [LibraryImport("libc", SetLastError = true)]
    public static partial int kill(int pid, int sig);

    [LibraryImport("libc")]
    public static partial uint geteuid();

    [LibraryImport("libc")]
    public static partial uint getegid();

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int chown(string path, int owner, int group);
}
