using System.Diagnostics;
using System.Globalization;

namespace Suanli.Agent;

/// <summary>How a local agent may run tenant jobs.</summary>
public sealed record SandboxOptions
{
    /// <summary>Run jobs as the agent's own user (a personal machine): allowed only for an unprivileged agent.</summary>
    public bool SingleUser { get; init; }

    /// <summary>Tenant N runs as Unix account <c>suanli-{UidBase + N}</c> with that uid and gid (created when missing).</summary>
    public long UidBase { get; init; } = 200_000;

    /// <summary>Path of bubblewrap; null to look on the usual paths.</summary>
    public string? Bubblewrap { get; init; }
}

/// <summary>
/// Puts a tenant's job in a sandbox before it runs (docs/security.md): as the tenant's own unprivileged Unix account
/// (never root, never the agent's user), through bubblewrap in private PID, IPC, UTS, user and mount namespaces that
/// show a read-only view of the host's programs and libraries, fresh /proc, /dev and /tmp, and the attempt's own work
/// folder — nothing of the agent's data folder, keys or other jobs. The job's control group is joined by the root
/// wrapper before the privileges are dropped, so the job can neither write its limits nor leave the group. When the
/// agent lacks the privilege for all this it refuses (<see cref="Detect"/> throws) unless it was started in
/// single-user mode, which runs jobs as the agent's own user with what containment the machine allows.
/// </summary>
public sealed class JobSandbox
{
    private static readonly SemaphoreSlim Accounts = new(1, 1);
    private readonly SandboxOptions _options;
    private readonly string? _bwrap;

    /// <summary>The bubblewrap binary jobs run under (its real path), or null when the sandbox does not use it.</summary>
    public string? Bubblewrap => _bwrap is null ? null : Path.GetFullPath(new FileInfo(_bwrap).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? _bwrap);

    private JobSandbox(SandboxOptions options, string? bwrap, bool isolated, string describe)
    {
        _options = options;
        _bwrap = bwrap;
        Isolated = isolated;
        Describe = describe;
    }

    /// <summary>True when jobs run as per-tenant accounts in namespaces; false in single-user mode.</summary>
    public bool Isolated { get; }

    /// <summary>What the sandbox enforces, for the agent's start-up line and the provider list.</summary>
    public string Describe { get; }

    /// <summary>The uid this process runs as.</summary>
    public static uint AgentUid => Native.geteuid();

    /// <summary>
    /// Checks what this machine allows. Root with bubblewrap and a control-group limiter: isolated. Otherwise single-user
    /// mode when asked for (and not root), else an <see cref="InvalidOperationException"/> saying what is missing.
    /// </summary>
    public static JobSandbox Detect(SandboxOptions options, ResourceLimiter limiter)
    {
        var bwrap = options.Bubblewrap ?? new[] { "/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap" }.FirstOrDefault(File.Exists);
        var root = AgentUid == 0;
        if (options.SingleUser)
        {
            if (root)
            {
                throw new InvalidOperationException("--single-user: jobs never run as root; an agent started as root runs each tenant's jobs as its own account (drop --single-user)");
            }

            var view = bwrap is not null ? "bubblewrap namespaces (own PID and mount view)" : "no namespaces (bubblewrap not installed)";
            return new JobSandbox(options, bwrap, false, $"SINGLE-USER: jobs run as this agent's user (uid {AgentUid.ToString(CultureInfo.InvariantCulture)}); {view}; limits: {limiter.Describe}");
        }

        var missing = new List<string>();
        if (!root)
        {
            missing.Add("root (to run each tenant as its own Unix account)");
        }

        if (bwrap is null)
        {
            missing.Add("bubblewrap (Debian: apt-get install bubblewrap)");
        }

        if (!limiter.Contains)
        {
            missing.Add($"a writable control-group hierarchy (have: {limiter.Describe})");
        }

        if (missing.Count > 0)
        {
            throw new InvalidOperationException("this agent cannot isolate tenant jobs: it needs " + string.Join(", ", missing)
                + ". Start it with --single-user to run jobs as your own user on a personal machine.");
        }

        return new JobSandbox(options, bwrap, true,
            $"isolated: per-tenant accounts (uid {options.UidBase.ToString(CultureInfo.InvariantCulture)} + tenant id), bubblewrap namespaces, limits: {limiter.Describe}");
    }

    /// <summary>The account a tenant's jobs run as: (name, uid, gid). Created on first use when isolated.</summary>
    public async Task<(string Name, int Uid, int Gid)> AccountAsync(long tenantId)
    {
        if (!Isolated)
        {
            var me = (int)AgentUid;
            return (Environment.UserName, me, (int)Native.getegid());
        }

        var uid = checked(_options.UidBase + tenantId);
        if (tenantId < 1 || uid is < 1000 or > 2_000_000_000 || uid == 65534)
        {
            throw new InvalidOperationException($"tenant {tenantId}: uid {uid} is outside the range job accounts may use");
        }

        var name = "suanli-" + uid.ToString(CultureInfo.InvariantCulture);
        await Accounts.WaitAsync();
        try
        {
            if (Lookup(name) is { } found)
            {
                return Checked(name, found.Uid, found.Gid);
            }

            var u = uid.ToString(CultureInfo.InvariantCulture);
            // Other agents on this machine may add accounts at the same moment: useradd's lock then fails; retry.
            for (var attempt = 0; attempt < 40; attempt++)
            {
                if (Lookup(name) is { } raced)
                {
                    return Checked(name, raced.Uid, raced.Gid);
                }

                if (!GroupExists(name))
                {
                    Run("groupadd", "--system", "--gid", u, name);
                }

                if (Run("useradd", "--system", "--uid", u, "--gid", name, "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--comment", $"Suanli tenant {tenantId.ToString(CultureInfo.InvariantCulture)}", name) == 0)
                {
                    break;
                }

                await Task.Delay(50 + Random.Shared.Next(100));
            }

            var made = Lookup(name) ?? throw new InvalidOperationException($"tenant {tenantId}: could not create Unix account {name}");
            return Checked(name, made.Uid, made.Gid);
        }
        finally
        {
            Accounts.Release();
        }
    }

    private static (string, int, int) Checked(string name, int uid, int gid)
    {
        if (uid == 0 || gid == 0 || uid == (int)AgentUid)
        {
            throw new InvalidOperationException($"account {name} maps to a privileged or the agent's own id; refusing to run jobs as it");
        }

        return (name, uid, gid);
    }

    /// <summary>An /etc/passwd entry by name (the agent's host database; NSS-only accounts are not supported).</summary>
    private static (int Uid, int Gid)? Lookup(string name)
    {
        foreach (var line in File.ReadLines("/etc/passwd"))
        {
            var f = line.Split(':');
            if (f.Length >= 4 && f[0] == name && int.TryParse(f[2], CultureInfo.InvariantCulture, out var uid) && int.TryParse(f[3], CultureInfo.InvariantCulture, out var gid))
            {
                return (uid, gid);
            }
        }

        return null;
    }

    private static bool GroupExists(string name) => File.ReadLines("/etc/group").Any(l => l.StartsWith(name + ":", StringComparison.Ordinal));

    private static int Run(string program, params string[] args)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"{program} did not start");
        p.StandardOutput.ReadToEnd();
        p.StandardError.ReadToEnd();
        p.WaitForExit();
        return p.ExitCode;
    }

    /// <summary>
    /// Prepares an attempt's work folder: created fresh (an existing one is refused), owned by the job's account,
    /// mode 0700, under a root folder other accounts can only traverse.
    /// </summary>
    public void PrepareWorkDir(string workRoot, string dir, int uid, int gid)
    {
        Directory.CreateDirectory(workRoot);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(workRoot, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        if (Isolated && !OperatingSystem.IsWindows())
        {
            // The job's account must be able to walk down to its folder (bubblewrap binds it as that account).
            for (var up = Path.GetDirectoryName(Path.GetFullPath(workRoot)); up is not null; up = Path.GetDirectoryName(up))
            {
                if ((File.GetUnixFileMode(up) & UnixFileMode.OtherExecute) == 0)
                {
                    throw new InvalidOperationException($"work folder {workRoot} is not reachable by job accounts: {up} is not searchable by others (chmod o+x, or choose another --work-dir outside the data folder)");
                }
            }
        }

        if (Directory.Exists(dir) || File.Exists(dir))
        {
            LocalBackend.TryDelete(dir);
        }

        Directory.CreateDirectory(dir);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        if (Isolated && Native.chown(dir, uid, gid) != 0)
        {
            throw new InvalidOperationException($"could not give the work folder to uid {uid}");
        }
    }

    /// <summary>Gives a file the agent wrote into the work folder (the batch script) to the job's account.</summary>
    public void Own(string file, int uid, int gid)
    {
        if (Isolated && Native.chown(file, uid, gid) != 0)
        {
            throw new InvalidOperationException($"could not give {Path.GetFileName(file)} to uid {uid}");
        }
    }

    /// <summary>
    /// The command line that runs <paramref name="argv"/> in the sandbox: setpriv drops to the account (no
    /// supplementary groups, no capabilities, no new privileges), then bubblewrap builds the namespaces.
    /// </summary>
    public IReadOnlyList<string> Wrap(string workDir, IReadOnlyList<string> argv, int uid, int gid)
    {
        var cmd = new List<string>();
        if (Isolated)
        {
            var u = uid.ToString(CultureInfo.InvariantCulture);
            var g = gid.ToString(CultureInfo.InvariantCulture);
            cmd.AddRange(["/usr/bin/setpriv", "--reuid", u, "--regid", g, "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]);
        }

        if (_bwrap is null)
        {
            cmd.AddRange(argv);
            return cmd;
        }

        cmd.AddRange([_bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "suanli-job"]);
        foreach (var top in new[] { "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt" })
        {
            var info = new FileInfo(top);
            if (info.LinkTarget is { } target)
            {
                cmd.AddRange(["--symlink", target, top]);
            }
            else if (Directory.Exists(top))
            {
                cmd.AddRange(["--ro-bind", top, top]);
            }
        }

        cmd.AddRange(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/var", "--tmpfs", "/var/tmp", "--bind", workDir, workDir, "--chdir", workDir, "--"]);
        cmd.AddRange(argv);
        return cmd;
    }
}
