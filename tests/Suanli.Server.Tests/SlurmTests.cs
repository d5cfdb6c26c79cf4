using System.Diagnostics;
using System.Net;
using System.Text;

namespace Suanli.Server.Tests;

/// <summary>
/// Two real Slurm clusters (slurmctld, slurmd, slurmrestd, munge from Debian) started by scripts/slurm-testbed.sh on
/// loopback, a control plane with its local provider, and one Slurm agent per cluster. If Slurm cannot be installed
/// or started the fixture fails: these tests never pass without the real daemons.
/// </summary>
public sealed class SlurmFixture : IAsyncLifetime
{
    public string Dir { get; } = Path.Combine(Path.GetTempPath(), "suanli-slurm-" + Guid.NewGuid().ToString("N")[..8]);

    public ServerProcess Server { get; private set; } = null!;

    public string TenantKey { get; private set; } = "";

    public List<Process> Agents { get; } = [];

    public StringBuilder AgentOutput { get; } = new();

    private static string Script()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "scripts", "slurm-testbed.sh")))
        {
            dir = dir.Parent;
        }

        return Path.Combine(dir?.FullName ?? throw new FileNotFoundException("scripts/slurm-testbed.sh not found above the test folder"), "scripts", "slurm-testbed.sh");
    }

    public void Testbed(params string[] args)
    {
        var psi = new ProcessStartInfo("bash", [Script(), .. args]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(10)), "slurm-testbed.sh did not finish in 10 minutes");
        Assert.True(p.ExitCode == 0, $"slurm-testbed.sh {string.Join(' ', args)} failed ({p.ExitCode}):\n{o.Result}\n{e.Result}");
    }

    public async Task InitializeAsync()
    {
        var basePort = 20000 + (Random.Shared.Next(0, 400) * 20);
        Testbed("start", "2", Dir, basePort.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Server = new ServerProcess(localProvider: true, lostAfterSeconds: 4, dataDir: null, "--placement", "price", "--spot-notice", "3", "--auction-interval", "3600");
        using var admin = Server.Admin();
        (_, TenantKey) = await admin.Tenant("hpc-lab");
        for (var i = 1; i <= 2; i++)
        {
            var (_, key) = await admin.Provider($"centre-{i}");
            Agents.Add(ServerProcess.StartSuanli(AgentOutput, null, "agent", "--server", Server.Url, "--key", key, "--backend", "slurm",
                "--slurmrestd", $"unix:{Dir}/c{i}/rest/rest.sock", "--output-dir", $"{Dir}/c{i}/jobs", "--work-dir", $"{Dir}/agent{i}",
                "--region", "r1", "--price", i == 1 ? "3.5" : "1.2"));
        }

        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < TimeSpan.FromSeconds(30))
        {
            var ready = (await admin.Get("/api/v1/providers"))["items"]!.AsArray().Count(p => p!["state"]!.GetValue<string>() == "ready");
            if (ready == 3)
            {
                return;
            }

            await Task.Delay(200);
        }

        Assert.Fail("the Slurm agents did not register:\n" + AgentOutput);
    }

    public Task DisposeAsync()
    {
        foreach (var a in Agents)
        {
            if (!a.HasExited)
            {
                a.Kill(true);
            }

            a.Dispose();
        }

        Server.Dispose();
        Testbed("stop", Dir);
        return Task.CompletedTask;
    }
}

public class SlurmTests(SlurmFixture f) : IClassFixture<SlurmFixture>
{
    [Fact]
    public async Task Providers_DiscoveredFromSlurmPartitions()
    {
        using var admin = f.Server.Admin();
        var providers = (await admin.Get("/api/v1/providers"))["items"]!.AsArray();
        var centre = providers.First(p => p!["name"]!.GetValue<string>() == "centre-1")!;
        var group = Assert.Single(centre["groups"]!.AsArray())!;
        Assert.Equal("main", group["id"]!.GetValue<string>());
        Assert.Equal(2000, group["milliCpu"]!.GetValue<long>());
        Assert.Equal(2000, group["memoryMiB"]!.GetValue<long>());
    }

    [Fact]
    public async Task OutbidSpotJobOnSlurm_GetsSigusr1AndTheNoticeFile_ThenIsCancelledAndRequeued()
    {
        using var admin = f.Server.Admin();
        var providers = (await admin.Get("/api/v1/providers"))["items"]!.AsArray();
        var centre = providers.First(p => p!["name"]!.GetValue<string>() == "centre-1")!["id"]!.GetValue<long>();
        var (xId, xKey) = await admin.Tenant("spot-hpc-x");
        var (yId, yKey) = await admin.Tenant("spot-hpc-y");
        await admin.Post($"/api/v1/wallets/{xId}/topups", new { amount = 100 }, HttpStatusCode.Created);
        await admin.Post($"/api/v1/wallets/{yId}/topups", new { amount = 100 }, HttpStatusCode.Created);
        var offer = await admin.Post("/api/v1/offers", new { providerId = centre, group = "main", tier = "interruptible", unit = "core-hour", price = 0.01, nodes = 1 }, HttpStatusCode.Created);
        var firstRound = Stopwatch.StartNew(); // the loop's first (empty) round; the next is an hour away, so only the explicit clears below count
        while ((await admin.Get("/api/v1/market/rounds")).AsArray().Count == 0 && firstRound.Elapsed < TimeSpan.FromSeconds(20))
        {
            await Task.Delay(50);
        }

        using var x = f.Server.Client(xKey);
        using var y = f.Server.Client(yKey);
        long jx = 0, jy = 0;
        try
        {
            var script = "#!/bin/sh\ntrap 'echo notice $SUANLI_TIER $SUANLI_PREEMPT_NOTICE_SECONDS $(head -n 1 \"$SUANLI_PREEMPT_FILE\")' USR1\necho started\nwhile :; do sleep 0.2; done\n";
            jx = (await x.Post("/api/v1/jobs", new { name = "spot-x", script, resources = new { cpu = 1, memoryMiB = 100 }, timeLimitSeconds = 300, tier = "interruptible", maxPrice = 0.05,
                constraints = new { providers = new[] { "centre-1" } } }, HttpStatusCode.Created))["id"]!.GetValue<long>();
            await admin.Post("/api/v1/market/clear", new { });
            await x.WaitJob(jx, j => j.State() == "running", 60);
            jy = (await y.Post("/api/v1/jobs", new { name = "spot-y", command = new[] { "sleep", "60" }, resources = new { cpu = 2, memoryMiB = 100 }, timeLimitSeconds = 300,
                tier = "interruptible", maxPrice = 1, constraints = new { providers = new[] { "centre-1" } } }, HttpStatusCode.Created))["id"]!.GetValue<long>();
            var round = (await admin.Post("/api/v1/market/clear", new { })).AsArray().Single()!;
            Assert.Equal(2, round["volume"]!.GetValue<long>());

            var sw = Stopwatch.StartNew();
            string logs;
            do
            {
                await Task.Delay(250);
                logs = string.Concat((await x.Get($"/api/v1/jobs/{jx}/logs"))["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>()));
            }
            while (!logs.Contains("notice", StringComparison.Ordinal) && sw.Elapsed < TimeSpan.FromSeconds(30));
            Assert.Matches(@"notice interruptible 3 [1-3]\n", logs);
            await x.WaitJob(jx, j => j.State() == "queued" && j["attempt"]!.GetValue<int>() == 2, 60);
            Assert.Contains((await x.Get($"/api/v1/jobs/{jx}/events"))["items"]!.AsArray(), e => e!["message"]!.GetValue<string>().Contains("preempted after notice", StringComparison.Ordinal));
            await y.WaitJob(jy, j => j.State() == "running", 60);
        }
        finally
        {
            foreach (var (c, id) in new[] { (x, jx), (y, jy) })
            {
                if (id > 0)
                {
                    await c.PostAsync($"/api/v1/jobs/{id}/cancel", null);
                }
            }

            await admin.DeleteAsync($"/api/v1/offers/{offer["id"]}");
        }
    }

    [Theory]
    [InlineData("centre-1", "suanli-c1")]
    [InlineData("centre-2", "suanli-c2")]
    public async Task SbatchScript_RunsUnchangedOnTheChosenSlurmCluster(string provider, string cluster)
    {
        using var t = f.Server.Client(f.TenantKey);
        var script = "#!/bin/bash\n#SBATCH -J sb-test\n#SBATCH -n 1\n#SBATCH -t 2\n#SBATCH --mem=100M\n" +
            "echo \"cluster=$SLURM_CLUSTER_NAME suanli=$SUANLI_JOB_ID\"\n";
        // Submitted as a JSON job so it can carry a provider constraint; its script is the sbatch script, unchanged.
        var created = await t.Post("/api/v1/jobs", new
        {
            name = "sb-test", script, resources = new { cpu = 1, memoryMiB = 100 }, timeLimitSeconds = 120,
            constraints = new { providers = new[] { provider } },
        }, HttpStatusCode.Created);
        var id = created["id"]!.GetValue<long>();
        var done = await t.WaitJob(id, j => j.State() is "succeeded" or "failed", 60);
        Assert.True(done.State() == "succeeded", done.ToJsonString() + "\n" + f.AgentOutput);
        var logs = string.Concat((await t.Get($"/api/v1/jobs/{id}/logs"))["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>()));
        Assert.Equal($"cluster={cluster} suanli={id}\n", logs);
        var events = (await t.Get($"/api/v1/jobs/{id}/events"))["items"]!.AsArray().Select(e => e!["message"]!.GetValue<string>()).ToList();
        Assert.Contains(events, m => m.Contains("Slurm job", StringComparison.Ordinal));
        Assert.Contains(events, m => m.Contains("provider accounting: elapsed", StringComparison.Ordinal));
        var usage = Assert.Single((await t.Get($"/api/v1/jobs/{id}/usage"))["items"]!.AsArray())!;
        Assert.NotNull(usage["backendElapsedSeconds"]);
        Assert.Contains("cpu=1", usage["backendTres"]!.GetValue<string>(), StringComparison.Ordinal);
        using var admin = f.Server.Admin();
        var centre = (await admin.Get("/api/v1/providers"))["items"]!.AsArray().First(p => p!["name"]!.GetValue<string>() == provider)!["id"]!.GetValue<long>();
        var rec = await admin.Get($"/api/v1/usage/reconciliation?provider={centre}");
        var row = rec["items"]!.AsArray().First(r => r!["jobId"]!.GetValue<long>() == id)!;
        Assert.Equal(provider, row["provider"]!.GetValue<string>());
        Assert.NotNull(row["backendSeconds"]);
        Assert.Equal(row["meteredSeconds"]!.GetValue<long>() - row["backendSeconds"]!.GetValue<long>(), row["differenceSeconds"]!.GetValue<long>());
        Assert.True(rec["withBackendRecord"]!.GetValue<int>() >= 1);
    }

    [Fact]
    public async Task UnconstrainedJob_GoesToTheCheapestCentre_AndExplainSaysWhereItRuns()
    {
        using var t = f.Server.Client(f.TenantKey);
        var created = await t.Post("/api/v1/jobs", new
        {
            name = "cheap", command = new[] { "true" }, resources = new { cpu = 1, memoryMiB = 100 }, timeLimitSeconds = 60,
            constraints = new { regions = new[] { "r1" } },
        }, HttpStatusCode.Created);
        var id = created["id"]!.GetValue<long>();
        var done = await t.WaitJob(id, j => j.State() is "succeeded" or "failed", 60);
        Assert.Equal("succeeded", done.State());
        using var admin = f.Server.Admin();
        var cheapest = (await admin.Get("/api/v1/providers"))["items"]!.AsArray().First(p => p!["name"]!.GetValue<string>() == "centre-2")!["id"]!.GetValue<long>();
        Assert.Equal(cheapest, done["providerId"]!.GetValue<long>());

        // A job no centre can run is explained per node group.
        var big = await t.Post("/api/v1/jobs", new
        {
            name = "too-big", command = new[] { "true" }, resources = new { cpu = 64, memoryMiB = 100 }, timeLimitSeconds = 60,
            constraints = new { regions = new[] { "r1" } },
        }, HttpStatusCode.Created);
        await Task.Delay(500);
        var lines = (await t.Get($"/api/v1/jobs/{big["id"]!.GetValue<long>()}/explain"))["lines"]!.AsArray().Select(l => l!.GetValue<string>()).ToList();
        Assert.Contains(lines, l => l.StartsWith("centre-1/main: filtered by shape", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("centre-2/main: filtered by shape", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("local/local: filtered by", StringComparison.Ordinal));
        await t.Post($"/api/v1/jobs/{big["id"]!.GetValue<long>()}/cancel", new { });
    }

    [Fact]
    public async Task SameScript_RunsOnTheLocalProviderToo()
    {
        using var t = f.Server.Client(f.TenantKey);
        var script = "#!/bin/bash\n#SBATCH -J here\n#SBATCH -n 1\n#SBATCH -t 2\necho \"on $SLURM_CLUSTER_NAME\"\n";
        var created = await t.Post("/api/v1/jobs", new
        {
            name = "here", script, resources = new { cpu = 1, memoryMiB = 100 }, timeLimitSeconds = 120,
            constraints = new { providers = new[] { "local" } },
        }, HttpStatusCode.Created);
        var id = created["id"]!.GetValue<long>();
        var done = await t.WaitJob(id, j => j.State() is "succeeded" or "failed", 60);
        Assert.Equal("succeeded", done.State());
        using var admin = f.Server.Admin();
        var local = (await admin.Get("/api/v1/providers"))["items"]!.AsArray().First(p => p!["name"]!.GetValue<string>() == "local")!["id"]!.GetValue<long>();
        Assert.Equal(local, done["providerId"]!.GetValue<long>());
    }

    [Fact]
    public async Task FailingAndCancelledJobs_OnSlurm()
    {
        using var t = f.Server.Client(f.TenantKey);
        var fail = await t.Post("/api/v1/jobs", new
        {
            name = "exit-5", command = new[] { "/bin/sh", "-c", "exit 5" }, resources = new { cpu = 1, memoryMiB = 100 }, timeLimitSeconds = 60,
            constraints = new { providers = new[] { "centre-1" } },
        }, HttpStatusCode.Created);
        var sleeper = await t.Post("/api/v1/jobs", new
        {
            name = "long", command = new[] { "sleep", "300" }, resources = new { cpu = 1, memoryMiB = 100 }, timeLimitSeconds = 600,
            constraints = new { providers = new[] { "centre-2" } },
        }, HttpStatusCode.Created);
        var failed = await t.WaitJob(fail["id"]!.GetValue<long>(), j => j.State() is "succeeded" or "failed", 60);
        Assert.Equal("failed", failed.State());
        Assert.Equal(5, failed["exitCode"]!.GetValue<int>());

        var id = sleeper["id"]!.GetValue<long>();
        await t.WaitJob(id, j => j.State() == "running", 60);
        await t.Post($"/api/v1/jobs/{id}/cancel", new { });
        var sw = Stopwatch.StartNew();
        string? state = null;
        while (sw.Elapsed < TimeSpan.FromSeconds(30))
        {
            var psi = new ProcessStartInfo("squeue", ["-h", "-o", "%j %T"]) { RedirectStandardOutput = true };
            psi.Environment["SLURM_CONF"] = $"{f.Dir}/c2/slurm.conf";
            using var p = Process.Start(psi)!;
            state = (await p.StandardOutput.ReadToEndAsync()).Trim();
            await p.WaitForExitAsync();
            if (!state.Contains($"suanli-{id}", StringComparison.Ordinal))
            {
                break;
            }

            await Task.Delay(300);
        }

        Assert.DoesNotContain($"suanli-{id} RUNNING", state ?? "", StringComparison.Ordinal);
    }
}

public class SlurmFailoverTests
{
    [Fact]
    public async Task DeadSlurmController_ProviderMarkedLost_AndItsJobRunsOnAnotherCentre()
    {
        var fixture = new SlurmFixture();
        await fixture.InitializeAsync();
        try
        {
            using var t = fixture.Server.Client(fixture.TenantKey);
            var created = await t.Post("/api/v1/jobs", new
            {
                name = "failover", command = new[] { "/bin/sh", "-c", "sleep 4; echo finished on $SLURM_CLUSTER_NAME" },
                resources = new { cpu = 1, memoryMiB = 100 }, timeLimitSeconds = 120, retry = new { maxAttempts = 2 },
                constraints = new { providers = new[] { "centre-1", "centre-2" } },
            }, HttpStatusCode.Created);
            var id = created["id"]!.GetValue<long>();
            var running = await t.WaitJob(id, j => j.State() == "running", 60);
            using var admin = fixture.Server.Admin();
            var providers = (await admin.Get("/api/v1/providers"))["items"]!.AsArray();
            var holder = providers.First(p => p!["id"]!.GetValue<long>() == running["providerId"]!.GetValue<long>())!["name"]!.GetValue<string>();
            var index = holder == "centre-1" ? 1 : 2;

            // Kill that centre's controller: its agent stops renewing, the provider is marked lost, the job moves.
            var pid = File.ReadAllText(Path.Combine(fixture.Dir, $"c{index}", "slurmctld.pid")).Trim();
            using (var kill = Process.Start("kill", ["-9", pid]))
            {
                await kill.WaitForExitAsync();
            }

            var done = await t.WaitJob(id, j => j.State() is "succeeded" or "failed" or "lost", 90);
            Assert.True(done.State() == "succeeded", done.ToJsonString() + "\n" + fixture.AgentOutput);
            Assert.Equal(2, done["attempt"]!.GetValue<int>());
            Assert.NotEqual(running["providerId"]!.GetValue<long>(), done["providerId"]!.GetValue<long>());
            var lost = (await admin.Get("/api/v1/providers"))["items"]!.AsArray().First(p => p!["name"]!.GetValue<string>() == holder)!;
            Assert.Equal("lost", lost["state"]!.GetValue<string>());
            Assert.Contains("backend unhealthy", fixture.AgentOutput.ToString(), StringComparison.Ordinal);
        }
        finally
        {
            await fixture.DisposeAsync();
        }
    }
}
