using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Text;

namespace Suanli.Server.Tests;

public class CrashTests
{
    [Fact]
    public async Task KillDashNine_DuringConcurrentSubmissions_EveryAcknowledgedJobExistsExactlyOnce()
    {
        using var s = new ServerProcess(localProvider: false);
        string key;
        using (var admin = s.Admin())
        {
            (_, key) = await admin.Tenant("crash");
        }

        var acknowledged = new ConcurrentDictionary<string, long>();
        using var stop = new CancellationTokenSource();
        var next = 0;
        var workers = Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
        {
            using var c = s.Client(key);
            c.Timeout = TimeSpan.FromSeconds(5);
            while (!stop.IsCancellationRequested)
            {
                var name = $"c{Interlocked.Increment(ref next)}";
                try
                {
                    using var req = new HttpRequestMessage(HttpMethod.Post, "/api/v1/jobs") { Content = JsonContent.Create(Api.Job(name, ["true"])) };
                    req.Headers.Add("Idempotency-Key", name);
                    using var resp = await c.SendAsync(req);
                    if (resp.StatusCode == HttpStatusCode.Created)
                    {
                        var j = await resp.Json(HttpStatusCode.Created);
                        acknowledged[name] = j["id"]!.GetValue<long>();
                    }
                }
                catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
                {
                    // The server died under us: this submission was not acknowledged.
                    return;
                }
            }
        })).ToList();

        var sw = Stopwatch.StartNew();
        while (acknowledged.Count < 300 && sw.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(20);
        }

        s.Kill();
        await stop.CancelAsync();
        await Task.WhenAll(workers);
        Assert.True(acknowledged.Count >= 300, $"only {acknowledged.Count} acknowledged before the kill");

        s.Start();
        using var admin2 = s.Admin();
        var all = new List<(long Id, string Name)>();
        string? after = null;
        do
        {
            var page = await admin2.Get("/api/v1/jobs?limit=1000" + (after is null ? "" : $"&after={after}"));
            all.AddRange(page["items"]!.AsArray().Select(j => (j!["id"]!.GetValue<long>(), j["name"]!.GetValue<string>())));
            after = page["next"]?.GetValue<string>();
        }
        while (after is not null);

        var byName = all.GroupBy(j => j.Name).ToDictionary(g => g.Key, g => g.ToList());
        foreach (var (name, id) in acknowledged)
        {
            Assert.True(byName.TryGetValue(name, out var rows), $"acknowledged job {name} (id {id}) is missing after the crash");
            var row = Assert.Single(rows);
            Assert.Equal(id, row.Id);
        }

        Assert.All(byName, kv => Assert.Single(kv.Value));
    }

    [Fact]
    public async Task AgentKilledMidJob_JobIsLost_AndRetriedOnAnotherProvider()
    {
        using var s = new ServerProcess(localProvider: false, lostAfterSeconds: 2);
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("t");
        var (idA, keyA) = await admin.Provider("site-a");
        var (idB, keyB) = await admin.Provider("site-b");
        var outA = new StringBuilder();
        var outB = new StringBuilder();
        var marker = "41" + Random.Shared.Next(10000, 99999).ToString(System.Globalization.CultureInfo.InvariantCulture);
        using var agentA = ServerProcess.StartSuanli(outA, null, "agent", "--server", s.Url, "--key", keyA, "--cpu", "1", "--memory-mib", "512", "--work-dir", s.DataDir + "-a");
        Process? agentB = null;
        try
        {
            using var t = s.Client(key);
            var job = await t.Post("/api/v1/jobs", Api.Job("survivor", ["/bin/sh", "-c", $"sleep 3; echo done # {marker}"], retry: new { maxAttempts = 2 }), HttpStatusCode.Created);
            var id = job["id"]!.GetValue<long>();
            var running = await t.WaitJob(id, j => j.State() == "running", 30);
            Assert.Equal(idA, running["providerId"]!.GetValue<long>());

            agentA.Kill(entireProcessTree: false);
            agentA.WaitForExit();
            agentB = ServerProcess.StartSuanli(outB, null, "agent", "--server", s.Url, "--key", keyB, "--cpu", "1", "--memory-mib", "512", "--work-dir", s.DataDir + "-b");
            var done = await t.WaitJob(id, j => j.State() is "succeeded" or "failed" or "lost", 40);
            Assert.True(done.State() == "succeeded", done.ToJsonString() + "\nagent B:\n" + outB);
            Assert.Equal(idB, done["providerId"]!.GetValue<long>());
            Assert.Equal(2, done["attempt"]!.GetValue<int>());
            var events = (await t.Get($"/api/v1/jobs/{id}/events"))["items"]!.AsArray().Select(e => e!["message"]!.GetValue<string>()).ToList();
            Assert.Contains(events, m => m.StartsWith("lost: provider site-a", StringComparison.Ordinal));
            var providers = (await admin.Get("/api/v1/providers"))["items"]!.AsArray();
            Assert.Equal("lost", providers.First(p => p!["id"]!.GetValue<long>() == idA)!["state"]!.GetValue<string>());
        }
        finally
        {
            agentB?.Kill(true);
            agentB?.Dispose();
            using var kill = Process.Start("pkill", ["-f", $"# {marker}"]);
            kill.WaitForExit();
        }
    }

    [Fact]
    public async Task KillDashNine_MidSettlement_LosesNoMoney_AndSettlesEveryAttemptOnce()
    {
        using var s = new ServerProcess(localProvider: false, lostAfterSeconds: 30);
        string key;
        long tenantId, providerId;
        var outA = new StringBuilder();
        Process agent;
        using (var admin = s.Admin())
        {
            (tenantId, key) = await admin.Tenant("payer");
            (providerId, var pkey) = await admin.Provider("crash-site");
            agent = ServerProcess.StartSuanli(outA, null, "agent", "--server", s.Url, "--key", pkey, "--cpu", "2", "--memory-mib", "1024", "--work-dir", s.DataDir + "-agent");
            var sw = Stopwatch.StartNew();
            while ((await admin.Get("/api/v1/providers"))["items"]![0]!["groups"]!.AsArray().Count == 0 && sw.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(100);
            }

            await admin.Post("/api/v1/offers", new { providerId, group = "local", tier = "on-demand", unit = "core-hour", price = 3600, nodes = 1 }, HttpStatusCode.Created);
            await admin.Post($"/api/v1/wallets/{tenantId}/topups", new { amount = 10_000 }, HttpStatusCode.Created);
        }

        try
        {
            var ids = new List<long>();
            using (var t = s.Client(key))
            {
                for (var i = 0; i < 30; i++)
                {
                    ids.Add((await t.Post("/api/v1/jobs", Api.Job($"pay{i}", ["/bin/sh", "-c", "sleep 0.4"]), HttpStatusCode.Created))["id"]!.GetValue<long>());
                }
            }

            // Kill the server while jobs are being leased (holds), finishing (settlements) and reported.
            using (var admin = s.Admin())
            {
                var sw = Stopwatch.StartNew();
                while ((await admin.Get("/api/v1/settlements")).AsArray().Count(x => x!["state"]!.GetValue<string>() == "settled") < 6 && sw.Elapsed < TimeSpan.FromSeconds(60))
                {
                    await Task.Delay(50);
                }
            }

            s.Kill();
            await Task.Delay(1000);
            s.Start();
            using var admin2 = s.Admin();
            using var t2 = s.Client(key);
            foreach (var id in ids)
            {
                await t2.WaitJob(id, j => j.State() is "succeeded" or "failed" or "lost" or "cancelled", 90);
            }

            var verify = await admin2.Get("/api/v1/ledger/verify");
            Assert.True(verify["ok"]!.GetValue<bool>(), verify.ToJsonString());
            Assert.Equal(0, verify["openHolds"]!.GetValue<int>());
            var settlements = (await admin2.Get("/api/v1/settlements")).AsArray().Select(x => x!).ToList();
            foreach (var id in ids)
            {
                var job = await t2.Get($"/api/v1/jobs/{id}");
                var mine = settlements.Where(x => x["jobId"]!.GetValue<long>() == id).ToList();
                Assert.Equal(mine.Count, mine.Select(x => x["attempt"]!.GetValue<int>()).Distinct().Count());
                if (job.State() == "succeeded")
                {
                    var last = mine.Single(x => x["attempt"]!.GetValue<int>() == job["attempt"]!.GetValue<int>());
                    Assert.Equal("settled", last["state"]!.GetValue<string>());
                }
            }

            long Sum(string f) => settlements.Where(x => x["state"]!.GetValue<string>() == "settled").Sum(x => x[f]!.GetValue<long>());
            var accounts = (await admin2.Get("/api/v1/ledger/accounts")).AsArray().ToDictionary(x => x!["id"]!.GetValue<string>(), x => x!["posted"]!.GetValue<long>());
            Assert.Equal(1_000_000 - Sum("tenantFen"), accounts[$"tenant:{tenantId}"]);
            Assert.Equal(Sum("providerFen"), accounts[$"provider:{providerId}"]);
            Assert.Equal(Sum("feeFen"), accounts["platform:fee"]);
            Assert.True(ids.Count(id => settlements.Any(x => x["jobId"]!.GetValue<long>() == id && x["state"]!.GetValue<string>() == "settled")) >= 25,
                "most jobs should have run and been charged:\n" + Snapshot(outA));
        }
        finally
        {
            agent.Kill(true);
            agent.Dispose();
        }
    }

    [Fact]
    public async Task ASecondAgent_WithTheSameKey_IsRefused_UnlessItTakesOver()
    {
        using var s = new ServerProcess(localProvider: false);
        using var admin = s.Admin();
        var (_, pkey) = await admin.Provider("single");
        var first = new StringBuilder();
        using var a = ServerProcess.StartSuanli(first, null, "agent", "--server", s.Url, "--key", pkey, "--cpu", "1", "--memory-mib", "512", "--work-dir", s.DataDir + "-a");
        try
        {
            var sw = Stopwatch.StartNew();
            while ((await admin.Get("/api/v1/providers"))["items"]![0]!["epoch"]!.GetValue<long>() == 0 && sw.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(100);
            }

            var second = new StringBuilder();
            using (var b = ServerProcess.StartSuanli(second, null, "agent", "--server", s.Url, "--key", pkey, "--cpu", "1", "--memory-mib", "512", "--work-dir", s.DataDir + "-b"))
            {
                Assert.True(b.WaitForExit(TimeSpan.FromSeconds(60)), "the second agent kept running");
                b.WaitForExit();
                Assert.Equal(2, b.ExitCode);
            }

            lock (second)
            {
                Assert.Contains("already has a live agent", second.ToString(), StringComparison.Ordinal);
            }

            Assert.Equal(1, (await admin.Get("/api/v1/providers"))["items"]![0]!["epoch"]!.GetValue<long>());
            var third = new StringBuilder();
            using var c = ServerProcess.StartSuanli(third, null, "agent", "--server", s.Url, "--key", pkey, "--cpu", "1", "--memory-mib", "512", "--work-dir", s.DataDir + "-c", "--take-over");
            try
            {
                sw.Restart();
                while ((await admin.Get("/api/v1/providers"))["items"]![0]!["epoch"]!.GetValue<long>() < 2 && sw.Elapsed < TimeSpan.FromSeconds(30))
                {
                    await Task.Delay(100);
                }

                Assert.Equal(2, (await admin.Get("/api/v1/providers"))["items"]![0]!["epoch"]!.GetValue<long>());
                Assert.Contains("took over provider single", s.Output, StringComparison.Ordinal);
            }
            finally
            {
                c.Kill(true);
            }
        }
        finally
        {
            a.Kill(true);
        }
    }

    [Fact]
    public async Task StaleEpoch_IsRefused_AfterReRegistration()
    {
        using var s = new ServerProcess(localProvider: false);
        using var admin = s.Admin();
        var (_, pkey) = await admin.Provider("p");
        using var p = s.Client(pkey);
        var offer = new { region = "r", groups = new[] { new { id = "g", milliCpu = 2000, memoryMiB = 2048, nodes = 1, accelerators = 0 } } };
        var e1 = (await p.Post("/api/v1/agent/register", offer))["epoch"]!.GetValue<long>();
        // A second registration while the first agent is live is refused unless it takes over.
        Assert.Equal("agent_live", (await (await p.PostAsJsonAsync("/api/v1/agent/register", offer)).Json(HttpStatusCode.Conflict))["code"]!.GetValue<string>());
        var e2 = (await p.Post("/api/v1/agent/register", new { region = "r", groups = offer.groups, takeOver = true }))["epoch"]!.GetValue<long>();
        Assert.Equal(e1 + 1, e2);
        var stale = await (await p.PostAsJsonAsync("/api/v1/agent/heartbeat", new { epoch = e1, running = Array.Empty<long>() })).Json(HttpStatusCode.Conflict);
        Assert.Equal("stale_epoch", stale["code"]!.GetValue<string>());
        var leaseStale = await p.PostAsJsonAsync("/api/v1/agent/lease", new { epoch = e1, waitSeconds = 0 });
        Assert.Equal(HttpStatusCode.Conflict, leaseStale.StatusCode);
        await p.Post("/api/v1/agent/heartbeat", new { epoch = e2, running = Array.Empty<long>() });
    }

    private static string Snapshot(StringBuilder sb)
    {
        lock (sb)
        {
            return sb.ToString();
        }
    }

    private static int Count(string marker)
    {
        using var p = Process.Start(new ProcessStartInfo("pgrep", ["-f", marker]) { RedirectStandardOutput = true })!;
        var n = p.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length;
        p.WaitForExit();
        return n;
    }

    [Fact]
    public async Task RestartedAgent_StopsTheJobsItsKilledPredecessorLeftRunning()
    {
        using var s = new ServerProcess(localProvider: false, lostAfterSeconds: 2);
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("t");
        var (_, pkey) = await admin.Provider("edge");
        var work = s.DataDir + "-agent-work";
        var marker = "43" + Random.Shared.Next(10000, 99999).ToString(System.Globalization.CultureInfo.InvariantCulture);
        var out1 = new StringBuilder();
        var agent = ServerProcess.StartSuanli(out1, null, "agent", "--server", s.Url, "--key", pkey, "--cpu", "1", "--memory-mib", "512", "--work-dir", work);
        Process? again = null;
        try
        {
            using var t = s.Client(key);
            var id = (await t.Post("/api/v1/jobs", Api.Job("orphan", ["/bin/sh", "-c", $"sleep 600 # {marker}"], timeLimit: 900), HttpStatusCode.Created))["id"]!.GetValue<long>();
            await t.WaitJob(id, j => j.State() == "running", 30);
            agent.Kill(entireProcessTree: false);
            agent.WaitForExit();
            await Task.Delay(300);
            Assert.True(Count($"# {marker}") > 0, "the job should outlive its killed agent");

            again = ServerProcess.StartSuanli(out1, null, "agent", "--server", s.Url, "--key", pkey, "--cpu", "1", "--memory-mib", "512", "--work-dir", work, "--take-over");
            var sw = Stopwatch.StartNew();
            while (Count($"# {marker}") > 0 && sw.Elapsed < TimeSpan.FromSeconds(20))
            {
                await Task.Delay(100);
            }

            Assert.True(Count($"# {marker}") == 0, "the restarted agent did not stop the orphan:\n" + out1);

            // The agent logs the reaping right after it; its output arrives asynchronously.
            sw.Restart();
            while (!Snapshot(out1).Contains("previous agent left running", StringComparison.Ordinal) && sw.Elapsed < TimeSpan.FromSeconds(10))
            {
                await Task.Delay(100);
            }

            Assert.Contains("previous agent left running", Snapshot(out1), StringComparison.Ordinal);
        }
        finally
        {
            agent.Dispose();
            again?.Kill(true);
            again?.Dispose();
            using var kill = Process.Start("pkill", ["-f", $"# {marker}"]);
            kill.WaitForExit();
        }
    }
}
