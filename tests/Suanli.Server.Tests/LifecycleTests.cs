using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;

namespace Suanli.Server.Tests;

public class LifecycleTests
{
    [Fact]
    public async Task OutputWrittenWhileTheControlPlaneIsDown_IsDeliveredOnce_AndEachAttemptsLogIsSeparate()
    {
        using var s = new ServerProcess(localProvider: false);
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("chatty");
        var (_, providerKey) = await admin.Provider("steady");
        var output = new StringBuilder();
        using var agent = ServerProcess.StartSuanli(output, null, "agent", "--server", s.Url, "--key", providerKey, "--cpu", "1", "--memory-mib", "512", "--work-dir", s.DataDir + "-agent");
        try
        {
            using var t = s.Client(key);
            var id = (await t.Post("/api/v1/jobs", Api.Job("counter", ["/bin/sh", "-c", "i=1; while [ $i -le 40 ]; do echo line $i; i=$((i+1)); sleep 0.15; done"]), HttpStatusCode.Created))["id"]!.GetValue<long>();
            await t.WaitJob(id, j => j.State() == "running", 60);
            await Task.Delay(1000);
            s.Kill(); // kill -9: the agent cannot reach it for a while; the job keeps printing
            await Task.Delay(2500);
            s.Start();
            using var t2 = s.Client(key);
            await t2.WaitJob(id, j => j.State() == "succeeded", 60);
            var log = string.Concat((await t2.Get($"/api/v1/jobs/{id}/logs"))["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>()));
            Assert.Equal(string.Concat(Enumerable.Range(1, 40).Select(n => $"line {n}\n")), log);

            // A retried job: each chunk names its attempt, and one attempt's output can be read alone.
            var retried = (await t2.Post("/api/v1/jobs", new { name = "flaky", command = new[] { "/bin/sh", "-c", "echo attempt $SUANLI_ATTEMPT; exit 3" },
                resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60, retry = new { maxAttempts = 2, onFailure = true } }, HttpStatusCode.Created))["id"]!.GetValue<long>();
            await t2.WaitJob(retried, j => j.State() == "failed", 60);
            var chunks = (await t2.Get($"/api/v1/jobs/{retried}/logs"))["items"]!.AsArray();
            Assert.Equal([1, 2], chunks.Select(c => c!["attempt"]!.GetValue<int>()).Distinct());
            Assert.Equal("attempt 2\n", string.Concat((await t2.Get($"/api/v1/jobs/{retried}/logs?attempt=2"))["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>())));
        }
        finally
        {
            agent.Kill(true);
        }
    }

    [Fact]
    public async Task AJobThatEndsWhileTheControlPlaneIsDown_IsMeteredByWhenItRan_NotByWhenTheReportGotThrough()
    {
        using var s = new ServerProcess(localProvider: false);
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("punctual");
        var (_, providerKey) = await admin.Provider("patient-agent");
        var output = new StringBuilder();
        using var agent = ServerProcess.StartSuanli(output, null, "agent", "--server", s.Url, "--key", providerKey, "--cpu", "1", "--memory-mib", "512", "--work-dir", s.DataDir + "-agent");
        try
        {
            using var t = s.Client(key);
            var id = (await t.Post("/api/v1/jobs", Api.Job("short", ["/bin/sh", "-c", "sleep 1"]), HttpStatusCode.Created))["id"]!.GetValue<long>();
            await t.WaitJob(id, j => j.State() == "running", 60);
            s.Kill(); // the job ends about a second later, while nobody can hear it
            var down = Stopwatch.StartNew();
            await Task.Delay(6000);
            s.Start();
            using var t2 = s.Client(key);
            await t2.WaitJob(id, j => j.State() == "succeeded", 60);
            var usage = Assert.Single((await t2.Get($"/api/v1/jobs/{id}/usage"))["items"]!.AsArray())!;
            var metered = usage["endedMs"]!.GetValue<long>() - usage["startedMs"]!.GetValue<long>();
            Assert.True(down.ElapsedMilliseconds >= 6000);

            // A one-second job: before, it was metered to the report's receipt, past the six-second outage.
            Assert.InRange(metered, 900, 4000);
        }
        finally
        {
            agent.Kill(true);
        }
    }

    [Fact]
    public async Task ARemoteJob_KeepsRunningThroughAControlPlaneOutageLongerThanTheLease_AndEndsOnce_WithAllItsOutput()
    {
        // Issue 13: a remote job was killed and rerun after ~35 s of downtime. The agent self-fenced after its lease
        // (here 3 s) although nobody could have declared its provider lost: the control plane was not running. With an
        // outage grace granted (here 60 s) it keeps its jobs while the control plane's address refuses connections.
        using var s = new ServerProcess(localProvider: false, lostAfterSeconds: 3, extraArgs: ["--agent-outage-grace", "60"]);
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("steadfast");
        var (_, providerKey) = await admin.Provider("outage-agent");
        var output = new StringBuilder();
        using var agent = ServerProcess.StartSuanli(output, null, "agent", "--server", s.Url, "--key", providerKey, "--cpu", "1", "--memory-mib", "512", "--work-dir", s.DataDir + "-agent");
        try
        {
            using var t = s.Client(key);
            var id = (await t.Post("/api/v1/jobs", Api.Job("through-an-outage", ["/bin/sh", "-c", "echo before; sleep 9; echo after"], retry: new { maxAttempts = 3, onFailure = true }), HttpStatusCode.Created))["id"]!.GetValue<long>();
            await t.WaitJob(id, j => j.State() == "running", 60);
            s.Kill();
            await Task.Delay(6000); // twice the lease, while the job runs
            s.Start();
            using var t2 = s.Client(key);
            var done = await t2.WaitJob(id, j => j.State() is "succeeded" or "failed" or "lost", 60);
            var events = string.Join("\n", (await t2.Get($"/api/v1/jobs/{id}/events"))["items"]!.AsArray().Select(e => $"{e!["state"]}: {e["message"]}"));
            Assert.True(done.State() == "succeeded", events + "\nagent:\n" + output);
            Assert.Equal(1, done["attempt"]!.GetValue<int>());
            var logs = string.Concat((await t2.Get($"/api/v1/jobs/{id}/logs"))["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>()));
            Assert.Equal("before\nafter\n", logs);
            Assert.DoesNotContain("self-fencing", output.ToString(), StringComparison.Ordinal);
            var usage = Assert.Single((await t2.Get($"/api/v1/jobs/{id}/usage"))["items"]!.AsArray())!;
            Assert.InRange(usage["endedMs"]!.GetValue<long>() - usage["startedMs"]!.GetValue<long>(), 8_500, 12_000);
        }
        finally
        {
            agent.Kill(true);
        }
    }

    [Theory]
    [InlineData("connection refused: nothing listens, the control plane is down", System.Net.Sockets.SocketError.ConnectionRefused, true)]
    [InlineData("timed out: a partition looks the same, keep counting the lease", System.Net.Sockets.SocketError.TimedOut, false)]
    [InlineData("host unreachable: a partition, keep counting", System.Net.Sockets.SocketError.HostUnreachable, false)]
    [InlineData("network unreachable: a partition, keep counting", System.Net.Sockets.SocketError.NetworkUnreachable, false)]
    public void OnlyARefusedConnection_PausesTheAgentsLeaseClock(string name, System.Net.Sockets.SocketError error, bool down)
    {
        var e = new HttpRequestException(HttpRequestError.ConnectionError, "x", new System.Net.Sockets.SocketException((int)error));
        Assert.True(down == Suanli.Agent.ProviderAgent.IsControlPlaneDown(e), name);
        Assert.False(Suanli.Agent.ProviderAgent.IsControlPlaneDown(new HttpRequestException("no inner cause")));
    }

    [Fact]
    public async Task GracefulStop_OfThePlatform_RequeuesItsRunningJob_WithoutFailingOrChargingIt()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (tenantId, key) = await admin.Tenant("patient");
        using (var t = s.Client(key))
        {
            // Long enough that it is still running when the stop arrives on a loaded machine (a 3 s job could end first).
            var id = (await t.Post("/api/v1/jobs", Api.Job("through-a-restart", ["/bin/sh", "-c", "sleep 8; echo done"]), HttpStatusCode.Created))["id"]!.GetValue<long>();
            await t.WaitJob(id, j => j.State() == "running");
            using (var term = Process.Start("kill", ["-TERM", s.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
            {
                await term.WaitForExitAsync();
            }

            var sw = Stopwatch.StartNew();
            while (Process.GetProcesses().Any(p => p.Id == s.Pid) && sw.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(100);
            }

            s.Start();
            using var again = s.Client(key);
            JsonNode done;
            try
            {
                done = await again.WaitJob(id, j => j.State() is "succeeded" or "failed" or "lost", 60);
            }
            catch (Exception e)
            {
                var events = (await again.Get($"/api/v1/jobs/{id}/events"))["items"]!.AsArray().Select(e => $"{e!["state"]}: {e["message"]}");
                throw new InvalidOperationException(e.Message + "\nevents:\n" + string.Join("\n", events) + "\noutput:\n" + s.Output, e);
            }

            var history = (await again.Get($"/api/v1/jobs/{id}/events"))["items"]!.AsArray().Select(e => $"{e!["state"]}: {e["message"]}").ToList();
            Assert.True(done.State() == "succeeded", string.Join("\n", history));
            Assert.Contains(history, h => h.StartsWith("queued: interrupted by the provider", StringComparison.Ordinal));
            Assert.DoesNotContain(history, h => h.StartsWith("failed", StringComparison.Ordinal));
        }

        _ = tenantId;
    }

    [Fact]
    public async Task ASecondControlPlane_OnTheSameDataFolder_RefusesToStart_AndTheFirstCarriesOn()
    {
        using var s = new ServerProcess(localProvider: false);
        var output = new StringBuilder();
        using var second = ServerProcess.StartSuanli(output, null, "up", "--urls", $"http://127.0.0.1:{ServerProcess.FreePort()}", "--data", s.DataDir, "--no-local-provider");
        Assert.True(second.WaitForExit(TimeSpan.FromSeconds(60)), "the second control plane kept running on the same data folder");
        second.WaitForExit(); // drains the redirected output
        Assert.Equal(2, second.ExitCode);
        lock (output)
        {
            Assert.Contains("is in use by another control plane", output.ToString(), StringComparison.Ordinal);
        }

        using var admin = s.Admin();
        Assert.Equal(HttpStatusCode.OK, (await admin.GetAsync("/readyz")).StatusCode);
        await admin.Tenant("still-serving");
    }

    [Fact]
    public async Task MinimalJob_RunsOnLocalProvider_WithLogsEventsAndUsage()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (tenantId, key) = await admin.Tenant("acme");
        using var tenant = s.Client(key);

        // The minimal job of the issue, verbatim.
        var minimal = """{"name":"hello","command":["/bin/sh","-c","echo hello"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""";
        var created = await (await tenant.PostAsync("/api/v1/jobs", new StringContent(minimal, Encoding.UTF8, "application/json"))).Json(HttpStatusCode.Created);
        var id = created["id"]!.GetValue<long>();
        Assert.Equal("queued", created.State());
        var done = await tenant.WaitJob(id, j => j.State() is "succeeded" or "failed");
        Assert.Equal("succeeded", done.State());
        Assert.Equal(0, done["exitCode"]!.GetValue<int>());
        Assert.Equal(tenantId, done["tenantId"]!.GetValue<long>());

        var logs = await tenant.Get($"/api/v1/jobs/{id}/logs");
        Assert.Equal("hello\n", string.Concat(logs["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>())));
        var states = (await tenant.Get($"/api/v1/jobs/{id}/events"))["items"]!.AsArray().Select(e => e!["state"]!.GetValue<string>()).ToList();
        Assert.Equal(["queued", "leased", "running", "succeeded"], states);

        // A job that runs long enough to meter whole seconds of one core.
        var slow = await tenant.Post("/api/v1/jobs", Api.Job("slow", ["/bin/sh", "-c", "sleep 2.2"], cpu: 1), HttpStatusCode.Created);
        await tenant.WaitJob(slow["id"]!.GetValue<long>(), j => j.State() == "succeeded");
        var usage = await tenant.Get("/api/v1/usage?groupBy=tenant");
        var row = Assert.Single(usage["items"]!.AsArray());
        Assert.Equal("acme", row!["key"]!.GetValue<string>());
        Assert.Equal(2, row["jobs"]!.GetValue<int>());
        // sleep 2.2 metered in whole seconds between the agent's running and final reports: 2 s, more on a loaded machine.
        Assert.InRange(row["coreHours"]!.GetValue<decimal>(), 2m / 3600, 6m / 3600);
        var bySector = await admin.Get("/api/v1/usage?groupBy=sector&bucket=hour");
        Assert.Equal("research", bySector["items"]![0]!["key"]!.GetValue<string>());
        Assert.NotNull(bySector["items"]![0]!["bucket"]);
    }

    [Fact]
    public async Task FailedJob_KeepsExitCode_AndRetriesOnlyWhenAsked()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("t1");
        using var tenant = s.Client(key);
        var once = await tenant.Post("/api/v1/jobs", Api.Job("fail", ["/bin/sh", "-c", "exit 3"]), HttpStatusCode.Created);
        var twice = await tenant.Post("/api/v1/jobs", Api.Job("fail-retry", ["/bin/sh", "-c", "exit 3"], retry: new { maxAttempts = 2, onFailure = true }), HttpStatusCode.Created);
        var a = await tenant.WaitJob(once["id"]!.GetValue<long>(), j => j.State() == "failed");
        var b = await tenant.WaitJob(twice["id"]!.GetValue<long>(), j => j.State() == "failed");
        Assert.Equal(3, a["exitCode"]!.GetValue<int>());
        Assert.Equal(1, a["attempt"]!.GetValue<int>());
        Assert.Equal(3, b["exitCode"]!.GetValue<int>());
        Assert.Equal(2, b["attempt"]!.GetValue<int>());
    }

    [Fact]
    public async Task TimeLimit_StopsTheJob()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("t1");
        using var tenant = s.Client(key);
        var j = await tenant.Post("/api/v1/jobs", Api.Job("sleepy", ["sleep", "60"], timeLimit: 1), HttpStatusCode.Created);
        var done = await tenant.WaitJob(j["id"]!.GetValue<long>(), x => x.State() == "failed", 20);
        Assert.Contains("time limit", done["reason"]!.GetValue<string>(), StringComparison.Ordinal);
    }

    private static int CountProcesses(string marker)
    {
        var psi = new ProcessStartInfo("pgrep", ["-f", marker]) { RedirectStandardOutput = true };
        using var p = Process.Start(psi)!;
        var lines = p.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        p.WaitForExit();
        return lines.Length;
    }

    [Fact]
    public async Task Cancel_RunningJob_ItsWholeProcessTreeIsGone()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("t1");
        using var tenant = s.Client(key);
        var marker = "37" + Random.Shared.Next(10000, 99999).ToString(System.Globalization.CultureInfo.InvariantCulture);
        // A child in the background, a grandchild in a subshell, and the shell itself.
        var j = await tenant.Post("/api/v1/jobs", Api.Job("tree", ["/bin/sh", "-c", $"(sleep {marker} &); sleep {marker} & wait"], timeLimit: 600), HttpStatusCode.Created);
        var id = j["id"]!.GetValue<long>();
        await tenant.WaitJob(id, x => x.State() == "running");
        var sw = Stopwatch.StartNew();
        while (CountProcesses($"sleep {marker}") < 3 && sw.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(100);
        }

        // The shell (its command line holds the marker too), the background child and the grandchild.
        Assert.True(CountProcesses($"sleep {marker}") >= 3, "the job's process tree did not start");
        var cancelled = await tenant.Post($"/api/v1/jobs/{id}/cancel", new { });
        Assert.Equal("cancelled", cancelled.State());
        sw.Restart();
        while (CountProcesses($"sleep {marker}") > 0 && sw.Elapsed < TimeSpan.FromSeconds(20))
        {
            await Task.Delay(100);
        }

        Assert.Equal(0, CountProcesses($"sleep {marker}"));
        // Cancelling again is a conflict, not a second state change.
        var again = await tenant.PostAsJsonAsync($"/api/v1/jobs/{id}/cancel", new { });
        Assert.Equal(HttpStatusCode.Conflict, again.StatusCode);
    }

    [Fact]
    public async Task Restart_RecoversTheQueue_AndAnAgentThenRunsIt()
    {
        using var s = new ServerProcess(localProvider: false);
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("t1");
        var (_, providerKey) = await admin.Provider("edge");
        long id;
        using (var tenant = s.Client(key))
        {
            id = (await tenant.Post("/api/v1/jobs", Api.Job("wait-for-agent", ["/bin/sh", "-c", "echo ran"]), HttpStatusCode.Created))["id"]!.GetValue<long>();
        }

        s.Kill();
        s.Start();
        using var tenant2 = s.Client(key);
        Assert.Equal("queued", (await tenant2.Get($"/api/v1/jobs/{id}")).State());
        var output = new StringBuilder();
        using var agent = ServerProcess.StartSuanli(output, null, "agent", "--server", s.Url, "--key", providerKey, "--cpu", "1", "--memory-mib", "512",
            "--work-dir", s.DataDir + "-agent");
        try
        {
            var done = await tenant2.WaitJob(id, j => j.State() == "succeeded", 30);
            Assert.Equal("edge", (await admin.Get("/api/v1/providers"))["items"]![0]!["name"]!.GetValue<string>());
            Assert.NotNull(done["providerId"]);
        }
        finally
        {
            agent.Kill(true);
        }
    }
}

public class DependencyTests
{
    [Fact]
    public async Task Dependencies_HoldJobs_AndCancelThoseThatCanNeverRun()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("dep");
        var (_, other) = await admin.Tenant("other");
        using var t = s.Client(key);
        long Id(System.Text.Json.Nodes.JsonNode j) => j["id"]!.GetValue<long>();
        var a = Id(await t.Post("/api/v1/jobs", Api.Job("a", ["sleep", "1.5"]), HttpStatusCode.Created));
        var c = Id(await t.Post("/api/v1/jobs", Api.Job("c", ["false"]), HttpStatusCode.Created));
        object After(string name, string dep) => new { name, command = new[] { "true" }, resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60, dependencies = new[] { dep } };
        var b = Id(await t.Post("/api/v1/jobs", After("b", $"afterok:{a}"), HttpStatusCode.Created));
        var d = Id(await t.Post("/api/v1/jobs", After("d", $"afterok:{c}"), HttpStatusCode.Created));
        var e = Id(await t.Post("/api/v1/jobs", After("e", $"afternotok:{c}"), HttpStatusCode.Created));

        // The next cycle records why b waits (explain before it has run may still show b's placement).
        var explain = "";
        for (var i = 0; i < 50 && !explain.StartsWith("waiting", StringComparison.Ordinal); i++)
        {
            await Task.Delay(100);
            explain = (await t.Get($"/api/v1/jobs/{b}/explain"))["lines"]![0]!.GetValue<string>();
        }

        Assert.StartsWith($"waiting for dependencies: afterok:{a}", explain, StringComparison.Ordinal);

        var ja = await t.WaitJob(a, j => j.State() == "succeeded");
        var jb = await t.WaitJob(b, j => j.State() == "succeeded");
        Assert.True(jb["startedAt"]!.GetValue<DateTimeOffset>() >= ja["endedAt"]!.GetValue<DateTimeOffset>(), "b started before a ended");
        var jd = await t.WaitJob(d, j => j.State() == "cancelled");
        Assert.Contains("can never be satisfied", jd["reason"]!.GetValue<string>(), StringComparison.Ordinal);
        await t.WaitJob(e, j => j.State() == "succeeded");

        // A dependency on a job the tenant does not have is refused at submit.
        using var o = s.Client(other);
        var bad = await (await o.PostAsJsonAsync("/api/v1/jobs", After("x", $"afterok:{a}"))).Json(HttpStatusCode.BadRequest);
        Assert.Equal("dependencies", bad["errors"]![0]!["field"]!.GetValue<string>());
    }
}

public class RoutingTests
{
    [Fact]
    public async Task LatencyBound_ChoosesTheCloseRegion_AndExplainsTheFarOne()
    {
        var dir = Path.Combine(Path.GetTempPath(), "suanli-lat-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        var latency = Path.Combine(dir, "latency.txt");
        await File.WriteAllTextAsync(latency, "# from to ms\nshanghai guangzhou 28\nshanghai beijing 12\n");
        using var s = new ServerProcess(localProvider: true, lostAfterSeconds: 30, dataDir: null,
            "--latency", latency, "--local-region", "guangzhou", "--placement", "latency");
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("geo");
        var (bjId, bjKey) = await admin.Provider("bj-centre");
        var output = new StringBuilder();
        using var agent = ServerProcess.StartSuanli(output, null, "agent", "--server", s.Url, "--key", bjKey, "--region", "beijing",
            "--cpu", "1", "--memory-mib", "512", "--work-dir", Path.Combine(dir, "bj"));
        try
        {
            var sw = Stopwatch.StartNew();
            while ((await admin.Get("/api/v1/providers"))["items"]!.AsArray().Count(p => p!["state"]!.GetValue<string>() == "ready") < 2 && sw.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(200);
            }

            using var t = s.Client(key);
            object Job(string name, int maxMs) => new
            {
                name, command = new[] { "true" }, resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60,
                constraints = new { userRegion = "shanghai", maxLatencyMs = maxMs },
            };
            var near = await t.Post("/api/v1/jobs", Job("near", 20), HttpStatusCode.Created);
            var done = await t.WaitJob(near["id"]!.GetValue<long>(), j => j.State() == "succeeded", 30);
            Assert.Equal(bjId, done["providerId"]!.GetValue<long>());

            var either = await t.Post("/api/v1/jobs", Job("closest", 50), HttpStatusCode.Created);
            var closest = await t.WaitJob(either["id"]!.GetValue<long>(), j => j.State() == "succeeded", 30);
            Assert.Equal(bjId, closest["providerId"]!.GetValue<long>());

            var tooFar = await t.Post("/api/v1/jobs", Job("too-far", 5), HttpStatusCode.Created);
            await Task.Delay(500);
            var lines = (await t.Get($"/api/v1/jobs/{tooFar["id"]!.GetValue<long>()}/explain"))["lines"]!.AsArray().Select(l => l!.GetValue<string>()).ToList();
            Assert.Contains(lines, l => l.Contains("latency shanghai -> beijing is 12 ms, job allows at most 5 ms", StringComparison.Ordinal));
            Assert.Contains(lines, l => l.Contains("latency shanghai -> guangzhou is 28 ms", StringComparison.Ordinal));
        }
        finally
        {
            agent.Kill(true);
            Directory.Delete(dir, true);
        }
    }
}
