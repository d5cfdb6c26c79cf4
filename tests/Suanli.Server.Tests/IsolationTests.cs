using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json.Nodes;

namespace Suanli.Server.Tests;

/// <summary>
/// A tenant's job tries every escape of issue 12 on a real `suanli up` (root, per-tenant accounts, bubblewrap, real
/// control groups) and each attempt fails. These tests need root and bubblewrap: CI installs bubblewrap and runs as
/// root; without them they fail, they do not skip.
/// </summary>
public sealed class IsolationTests
{
    private static string Logs(JsonNode page) => string.Concat(page["items"]!.AsArray().Select(c => c!["data"]!.GetValue<string>()));

    private static void RequireIsolation()
    {
        Assert.True(File.Exists("/usr/bin/bwrap"), "bubblewrap (/usr/bin/bwrap) is required: apt-get install bubblewrap");
        Assert.True(Environment.UserName == "root" || Suanli.Agent.JobSandbox.AgentUid == 0, "the isolation tests run the platform as root, as CI does");
    }

    [Fact]
    public async Task TenantJob_CannotReadKeysDatabaseOrServer_CannotSignalIt_CannotRaiseOrLeaveItsLimits_AndLeavesNoSurvivor()
    {
        RequireIsolation();
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("mallory");
        using var mallory = s.Client(key);
        var marker = "7" + Random.Shared.Next(100_000, 999_999).ToString(CultureInfo.InvariantCulture);
        var cg = "/sys/fs/cgroup/memory/suanli";
        var script = string.Join("\n",
            "echo who=$(id -u)",
            $"cat {s.DataDir}/admin.key >/dev/null 2>&1 && echo LEAK-key || echo denied-key",
            $"cat {s.DataDir}/suanli.db-wal >/dev/null 2>&1 && echo LEAK-wal || echo denied-wal",
            $"cat {s.DataDir}/local-provider.key >/dev/null 2>&1 && echo LEAK-provider-key || echo denied-provider-key",
            $"cat /proc/{s.Pid}/environ >/dev/null 2>&1 && echo LEAK-environ || echo denied-environ",
            $"kill -TERM {s.Pid} 2>/dev/null && echo LEAK-signal || echo denied-signal",
            $"ls /proc | grep -qx {s.Pid} && echo LEAK-pid || echo denied-pid",
            // Raise its own memory limit and leave its group, by every path a job might try.
            $"for f in {cg}/*/memory.limit_in_bytes /sys/fs/cgroup/memory.max; do echo 999999999999 > $f 2>/dev/null && echo LEAK-limit; done; echo tried-limit",
            $"echo $$ > /sys/fs/cgroup/memory/cgroup.procs 2>/dev/null && echo LEAK-leave || echo denied-leave",
            $"echo $$ > /sys/fs/cgroup/cgroup.procs 2>/dev/null && echo LEAK-leave2 || echo denied-leave2",
            "touch /etc/suanli-owned 2>/dev/null && echo LEAK-etc || echo denied-etc",
            $"(setsid sleep {marker} >/dev/null 2>&1 &)",
            $"nohup sleep {marker} >/dev/null 2>&1 &",
            "echo work=$PWD mode=$(stat -c %a .) owner=$(stat -c %u .)",
            "echo end");
        var id = (await mallory.Post("/api/v1/jobs", new { name = "escape", script, resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60 }, HttpStatusCode.Created))["id"]!.GetValue<long>();
        var job = await mallory.WaitJob(id, j => j.State() is "succeeded" or "failed", 60);
        var log = Logs(await mallory.Get($"/api/v1/jobs/{id}/logs"));
        Assert.True(job.State() == "succeeded", job.ToJsonString() + "\n" + log + "\n" + s.Output);
        Assert.DoesNotContain("LEAK", log, StringComparison.Ordinal);
        foreach (var want in new[] { "denied-key", "denied-wal", "denied-provider-key", "denied-environ", "denied-signal", "denied-pid", "tried-limit", "denied-leave", "denied-leave2", "denied-etc", "end" })
        {
            Assert.Contains(want, log, StringComparison.Ordinal);
        }

        var uid = int.Parse(log.Split("who=")[1].Split('\n')[0], CultureInfo.InvariantCulture);
        Assert.True(uid >= 200_000, $"the job ran as uid {uid}, not as the tenant's own account");
        var work = log.Split("work=")[1].Split(' ')[0];
        Assert.False(work.StartsWith(s.DataDir, StringComparison.Ordinal), $"work folder {work} is inside the data folder");
        Assert.Contains("mode=700", log, StringComparison.Ordinal);
        Assert.Contains($"owner={uid}", log, StringComparison.Ordinal);

        // The server lived through it and nothing the job started outlives it.
        Assert.Equal(HttpStatusCode.OK, (await admin.GetAsync("/readyz")).StatusCode);
        var sw = Stopwatch.StartNew();
        while (Count($"sleep {marker}") > 0 && sw.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(100);
        }

        Assert.Equal(0, Count($"sleep {marker}"));
        Assert.False(Directory.Exists(work), "the attempt's work folder outlived the attempt");
        Assert.False(File.Exists("/etc/suanli-owned"));
    }

    [Fact]
    public async Task TenantJob_CannotSeeAnotherTenantsRunningJob_OrItsFolder()
    {
        RequireIsolation();
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var (_, aliceKey) = await admin.Tenant("alice");
        var (_, bobKey) = await admin.Tenant("bob");
        using var alice = s.Client(aliceKey);
        using var bob = s.Client(bobKey);
        var secret = "s" + Guid.NewGuid().ToString("N");
        var a = (await alice.Post("/api/v1/jobs", new { name = "holder", script = $"echo {secret} > secret.txt; echo dir=$PWD; sleep 30", resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60 },
            HttpStatusCode.Created))["id"]!.GetValue<long>();
        string dir = "";
        var sw = Stopwatch.StartNew();
        while (!dir.StartsWith('/') && sw.Elapsed < TimeSpan.FromSeconds(20))
        {
            await Task.Delay(200);
            var log = Logs(await alice.Get($"/api/v1/jobs/{a}/logs"));
            dir = log.Contains("dir=", StringComparison.Ordinal) ? log.Split("dir=")[1].Split('\n')[0] : "";
        }

        Assert.StartsWith("/", dir);
        var probe = string.Join("\n",
            $"cat {dir}/secret.txt 2>/dev/null && echo LEAK-file || echo denied-file",
            $"ls {dir} >/dev/null 2>&1 && echo LEAK-list || echo denied-list",
            $"ls -a {Path.GetDirectoryName(dir)} 2>/dev/null | grep -qx {Path.GetFileName(dir)} && echo LEAK-root || echo denied-root",
            "ps -eo args | grep -q '[s]leep 30' && echo LEAK-ps || echo denied-ps",
            "echo end");
        var b = (await bob.Post("/api/v1/jobs", new { name = "snoop", script = probe, resources = new { cpu = 0.5, memoryMiB = 64 }, timeLimitSeconds = 60 }, HttpStatusCode.Created))["id"]!.GetValue<long>();
        await bob.WaitJob(b, j => j.State() is "succeeded" or "failed", 60);
        var bobLog = Logs(await bob.Get($"/api/v1/jobs/{b}/logs"));
        Assert.DoesNotContain("LEAK", bobLog, StringComparison.Ordinal);
        Assert.DoesNotContain(secret, bobLog, StringComparison.Ordinal);
        foreach (var want in new[] { "denied-file", "denied-list", "denied-root", "denied-ps", "end" })
        {
            Assert.Contains(want, bobLog, StringComparison.Ordinal);
        }

        await alice.PostAsync($"/api/v1/jobs/{a}/cancel", null);
        await alice.WaitJob(a, j => j.State() == "cancelled");
    }

    [Fact]
    public async Task OutputFlood_IsCappedPerAttempt_AndTheLogEndsSayingHowMuchWasDropped()
    {
        RequireIsolation();
        using var s = new ServerProcess(true, 30, null, "--log-cap-mib", "1");
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("loud");
        using var t = s.Client(key);
        // 8 MiB of output in one burst (no newlines), then one line.
        var id = (await t.Post("/api/v1/jobs", new { name = "flood", script = "head -c 8388608 /dev/zero | tr '\\0' x; echo; echo after", resources = new { cpu = 1, memoryMiB = 256 }, timeLimitSeconds = 120 },
            HttpStatusCode.Created))["id"]!.GetValue<long>();
        var job = await t.WaitJob(id, j => j.State() is "succeeded" or "failed", 90);
        Assert.Equal("succeeded", job.State());
        var text = new System.Text.StringBuilder();
        var after = 0L;
        while (true)
        {
            var page = await t.Get($"/api/v1/jobs/{id}/logs?after={after}&limit=1000");
            var items = page["items"]!.AsArray();
            if (items.Count == 0)
            {
                break;
            }

            text.Append(Logs(page));
            after = items[^1]!["seq"]!.GetValue<long>();
        }

        var log = text.ToString();
        var stored = System.Text.Encoding.UTF8.GetByteCount(log[..log.IndexOf("\n[suanli] output truncated", StringComparison.Ordinal)]);
        Assert.Equal(1 << 20, stored);
        var dropped = long.Parse(log.Split("; ")[^1].Split(' ')[0], CultureInfo.InvariantCulture);
        Assert.Equal(8388608 + "\nafter\n".Length - (1 << 20), dropped);
        Assert.EndsWith("bytes were dropped\n", log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AgentLogBuffer_IsBounded_AndChunksStayUnderTheBodyLimit()
    {
        var sent = new List<(long Offset, string Data)>();
        var release = new TaskCompletionSource();
        using var shipper = new Suanli.Agent.ProviderAgent.LogShipper(null, 1, 1, async (offset, data) =>
        {
            await release.Task; // the server is slow: nothing drains until released
            lock (sent)
            {
                sent.Add((offset, data));
            }
        });
        var chunk = new string('y', 8192);
        var blocked = false;
        var added = 0L;
        for (var i = 0; i < 1000 && !blocked; i++)
        {
            var t = shipper.Add(chunk);
            added += chunk.Length;
            blocked = !t.IsCompleted; // the backend awaits this before reading more of the job's pipe
        }

        Assert.True(blocked, "the agent kept buffering output the server had not taken");
        Assert.InRange(shipper.HighWater, Suanli.Agent.ProviderAgent.LogShipper.MaxBuffered, Suanli.Agent.ProviderAgent.LogShipper.MaxBuffered + chunk.Length);
        release.SetResult();
        await shipper.FlushAsync(final: true);
        Assert.All(sent, c => Assert.True(c.Data.Length <= Suanli.Agent.ProviderAgent.LogShipper.ChunkChars));
        var offset = 0L;
        foreach (var (o, d) in sent.OrderBy(x => x.Offset))
        {
            Assert.Equal(offset, o);
            offset += d.Length;
        }

        Assert.Equal(added, offset);
    }

    private static int Count(string pattern)
    {
        using var p = Process.Start(new ProcessStartInfo("pgrep", ["-f", pattern]) { RedirectStandardOutput = true })!;
        var lines = p.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length;
        p.WaitForExit();
        return lines;
    }
}
