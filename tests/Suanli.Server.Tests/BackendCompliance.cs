using System.Diagnostics;
using System.Globalization;
using System.Text;
using Suanli.Agent;

namespace Suanli.Server.Tests;

/// <summary>
/// What every job backend must do, whatever runs the job (this machine's sandbox, a Slurm cluster): run it with its
/// environment, deliver its output in order, report its exit code, stop it and everything it started on request and at
/// its time limit, and pass a preemption notice to it. Each backend inherits this suite against the real thing.
/// </summary>
public abstract class BackendCompliance
{
    /// <summary>The backend under test, ready to take jobs.</summary>
    protected abstract IJobBackend Backend { get; }

    /// <summary>The node group jobs are started in.</summary>
    protected abstract string Group { get; }

    /// <summary>The shortest time limit the backend enforces to the second or so (Slurm counts whole minutes).</summary>
    protected virtual int ShortTimeLimitSeconds => 2;

    /// <summary>How long a backend may take to start or stop a job (a batch system schedules and polls).</summary>
    protected virtual TimeSpan Patience => TimeSpan.FromSeconds(60);

    /// <summary>How long the backend may take to reap a stopped job's processes after it reported the end.</summary>
    protected virtual TimeSpan Settle => TimeSpan.FromSeconds(5);

    /// <summary>
    /// How many processes of the job are still alive after it ended (0 for a backend that keeps its promise): those
    /// carrying its id in their environment, as both backends put it there (the Slurm test bed's slurmd runs here too).
    /// </summary>
    private async Task<int> LeftBehindAsync(JobHandle job)
    {
        var marker = $"SUANLI_JOB_ID={job.Job.Id.ToString(CultureInfo.InvariantCulture)}\0";
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var alive = Directory.EnumerateDirectories("/proc").Count(dir =>
            {
                try
                {
                    return int.TryParse(Path.GetFileName(dir), out _) && File.ReadAllText(Path.Combine(dir, "environ")).Contains(marker, StringComparison.Ordinal);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    return false; // the process ended while we looked
                }
            });
            if (alive == 0 || sw.Elapsed > Settle)
            {
                return alive;
            }

            await Task.Delay(100);
        }
    }

    private static long _ids = 7_000 + (Environment.ProcessId % 1000 * 1000);

    private static JobLaunch Job(string script, int timeLimitSeconds = 120, IReadOnlyDictionary<string, string>? env = null) =>
        new(Interlocked.Increment(ref _ids), 1, ["/bin/sh", "-c", script], null, env ?? new Dictionary<string, string>(), 1, 64, 1, timeLimitSeconds) { TenantId = 1 };

    private async Task<(JobHandle Handle, StringBuilder Output)> StartAsync(JobLaunch job)
    {
        var output = new StringBuilder();
        var h = await Backend.StartAsync(job, Group, s =>
        {
            lock (output)
            {
                output.Append(s);
            }

            return Task.CompletedTask;
        });
        await h.Started.WaitAsync(Patience);
        return (h, output);
    }

    private async Task<int> EndedAsync(JobHandle h, TimeSpan? extra = null) => await h.Exited.WaitAsync(Patience + (extra ?? TimeSpan.Zero));

    private static async Task UntilAsync(Func<bool> condition, TimeSpan patience)
    {
        var sw = Stopwatch.StartNew();
        while (!condition() && sw.Elapsed < patience)
        {
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task AJob_RunsWithItsEnvironment_ItsOutputArrivesInOrder_AndItsExitCodeIsReported()
    {
        var job = Job("echo \"id=$SUANLI_JOB_ID greeting=$GREETING\"; for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; exit 3",
            env: new Dictionary<string, string> { ["GREETING"] = "ni hao 你好" });
        var (h, output) = await StartAsync(job);
        Assert.Equal(3, await EndedAsync(h));
        var text = output.ToString();
        Assert.Contains($"id={job.Id.ToString(CultureInfo.InvariantCulture)} greeting=ni hao 你好\n", text, StringComparison.Ordinal);
        Assert.Contains("line 1\nline 2\nline 3\nline 4\nline 5\n", text, StringComparison.Ordinal);
        Assert.Contains("oops", text, StringComparison.Ordinal);
        Assert.Null(h.StoppedBecause);
    }

    [Fact]
    public async Task Stop_EndsTheJob_AndEverythingItStarted()
    {
        var (h, output) = await StartAsync(Job("sleep 300 & sleep 300 & echo children started; wait"));
        await UntilAsync(() => output.ToString().Contains("children started", StringComparison.Ordinal), Patience);
        Backend.Stop(h, "cancelled by the test");
        Assert.NotEqual(0, await EndedAsync(h));
        Assert.Equal("cancelled by the test", h.StoppedBecause);
        Assert.Equal(0, await LeftBehindAsync(h));
    }

    [Fact]
    public async Task TheTimeLimit_StopsAJobThatRunsOver_AndSaysSo()
    {
        var limit = ShortTimeLimitSeconds;
        var sw = Stopwatch.StartNew();
        var (h, _) = await StartAsync(Job("sleep 600 & wait", timeLimitSeconds: limit));
        Assert.NotEqual(0, await EndedAsync(h, TimeSpan.FromSeconds(limit)));
        Assert.True(sw.Elapsed >= TimeSpan.FromSeconds(limit) - TimeSpan.FromMilliseconds(500), $"stopped after {sw.Elapsed}, before its limit of {limit} s");
        Assert.Contains("time limit", h.StoppedBecause, StringComparison.Ordinal);
        Assert.Equal(0, await LeftBehindAsync(h));
    }

    [Fact]
    public async Task ANotice_ReachesTheJob_AsASignalAndAFile()
    {
        var script = "trap 'echo notice $(head -n 2 \"$SUANLI_PREEMPT_FILE\" | tr \"\\n\" \" \"); exit 0' USR1; echo ready; while :; do sleep 0.2; done";
        var (h, output) = await StartAsync(Job(script));
        await UntilAsync(() => output.ToString().Contains("ready", StringComparison.Ordinal), Patience);
        Assert.True(await Backend.NotifyAsync(h, 30, "outbid in the spot auction"));
        Assert.Equal(0, await EndedAsync(h));
        Assert.Contains("notice 30 outbid in the spot auction", output.ToString(), StringComparison.Ordinal);
    }
}

/// <summary>The local backend (sandboxed processes on this machine) against the compliance suite.</summary>
public sealed class LocalBackendCompliance : BackendCompliance, IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "suanli-backend-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly LocalBackend _backend;

    public LocalBackendCompliance()
    {
        var limiter = ResourceLimiter.Detect();
        _backend = new LocalBackend(limiter, JobSandbox.Detect(new SandboxOptions(), limiter), _root);
    }

    protected override IJobBackend Backend => _backend;

    protected override string Group => "local";

    public void Dispose()
    {
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>A one-cluster Slurm test bed (slurmctld, slurmd, slurmrestd on loopback) for the Slurm backend's compliance run.</summary>
public sealed class SlurmBedFixture : IAsyncLifetime
{
    private readonly SlurmFixture _bed = new();

    public string Dir => _bed.Dir;

    public Task InitializeAsync()
    {
        _bed.Testbed("start", "1", Dir, (20000 + (Random.Shared.Next(0, 400) * 20) + 10).ToString(CultureInfo.InvariantCulture));
        return Task.CompletedTask;
    }

    public Task DisposeAsync()
    {
        _bed.Testbed("stop", Dir);
        return Task.CompletedTask;
    }
}

/// <summary>The Slurm backend (jobs submitted through slurmrestd to a real Slurm 22.05 cluster) against the compliance suite.</summary>
public sealed class SlurmBackendCompliance(SlurmBedFixture bed) : BackendCompliance, IClassFixture<SlurmBedFixture>
{
    private readonly SlurmBackend _backend = new(new SlurmApiV0038(SlurmApiV0038.Client($"unix:{bed.Dir}/c1/rest/rest.sock")), $"{bed.Dir}/c1/jobs", "suanli-c1");

    protected override IJobBackend Backend => _backend;

    protected override string Group => "main";

    /// <summary>Slurm's time limits are whole minutes, enforced by the controller's periodic check.</summary>
    protected override int ShortTimeLimitSeconds => 60;

    protected override TimeSpan Patience => TimeSpan.FromSeconds(90);

    /// <summary>slurmd reaps a cancelled step's processes asynchronously.</summary>
    protected override TimeSpan Settle => TimeSpan.FromSeconds(15);
}
