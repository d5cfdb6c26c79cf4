using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;

namespace Suanli.Server.Tests;

/// <summary>
/// The scheduler's memory (run-time history for the suanli order, decayed usage for fair-share) survives a restart:
/// what `explain` says about a waiting job's place in the queue is the same before and after `kill -9`.
/// </summary>
public class SchedulerMemoryTests
{
    [Fact]
    public async Task Suanli_PredictionFromFinishedJobs_SurvivesARestart()
    {
        var (before, after, runs, _) = await QueueLineAcrossRestart("suanli");
        var expected = (long)Math.Round(runs.Average());
        Assert.Equal($"queue order suanli: predicted run time {expected} s (the mean of this tenant's last 2 finished jobs; never above the time limit 60 s)", before);
        Assert.Equal(before, after);
    }

    [Fact]
    public async Task FairShare_UsageOfFinishedJobs_SurvivesARestart()
    {
        var (before, after, runs, blocker) = await QueueLineAcrossRestart("fair-share");
        var used = Usage(before);
        // Two one-core jobs on a one-core pool: their seconds are dominant-share seconds (the running blocker is not charged yet).
        Assert.InRange(used, runs.Sum() - 0.01, runs.Sum() + 1.01);
        // After the restart the replayed history also holds the blocker, cancelled after `blocker` seconds.
        Assert.InRange(Usage(after), used + blocker - 1.01, used + blocker + 1.01);
    }

    [Fact]
    public async Task SuanliPlacement_FragmentationPrior_IsTheMixOfSubmittedTaskShapes()
    {
        using var s = new ServerProcess(false, 30, null, "--placement", "suanli", "--policy", "fcfs");
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("shapes");
        var (_, providerKey) = await admin.Provider("one-core");
        using var t = s.Client(key);
        var output = new StringBuilder();
        var agent = OneCoreAgent(output, s, providerKey, s.DataDir + "-agent");
        try
        {
            // Three tasks of two shapes (1 core twice, half a core once): both shapes are typical (95 % rule).
            var blocker = (await t.Post("/api/v1/jobs", Api.Job("blocker", ["sleep", "60"], cpu: 1), HttpStatusCode.Created))["id"]!.GetValue<long>();
            await t.WaitJob(blocker, j => j.State() == "running", 60);
            var probe = (await t.Post("/api/v1/jobs", Api.Job("probe", ["true"], cpu: 1), HttpStatusCode.Created))["id"]!.GetValue<long>();
            await t.Post("/api/v1/jobs", Api.Job("half", ["true"], cpu: 0.5), HttpStatusCode.Created);
            const string Expected = "placement suanli: fragmentation prior of 2 task shapes from the last 3 submitted tasks";
            var lines = new List<string>();
            for (var i = 0; i < 100 && !lines.Contains(Expected); i++)
            {
                await Task.Delay(100);
                lines = (await t.Get($"/api/v1/jobs/{probe}/explain"))["lines"]!.AsArray().Select(l => l!.GetValue<string>()).ToList();
            }

            Assert.Contains(Expected, lines);
            await t.Post($"/api/v1/jobs/{blocker}/cancel", new { });
        }
        finally
        {
            agent.Kill(true);
        }
    }

    /// <summary>A separate `suanli agent` process offering one core and 512 MiB.</summary>
    private static System.Diagnostics.Process OneCoreAgent(StringBuilder output, ServerProcess s, string providerKey, string workDir) =>
        ServerProcess.StartSuanli(output, null, "agent", "--server", s.Url, "--key", providerKey, "--cpu", "1", "--memory-mib", "512", "--work-dir", workDir);

    /// <summary>Whole seconds between a job's start and end, as the control plane meters them.</summary>
    private static long Seconds(JsonNode job)
    {
        var started = DateTimeOffset.Parse(job["startedAt"]!.GetValue<string>(), CultureInfo.InvariantCulture);
        var ended = DateTimeOffset.Parse(job["endedAt"]!.GetValue<string>(), CultureInfo.InvariantCulture);
        return (long)(ended - started).TotalMilliseconds / 1000;
    }

    private static async Task<long> Epoch(HttpClient admin) =>
        (await admin.Get("/api/v1/providers"))["items"]![0]!["epoch"]!.GetValue<long>();

    private static double Usage(string line)
    {
        Assert.StartsWith("queue order fair-share: tenant usage ", line, StringComparison.Ordinal);
        return double.Parse(line["queue order fair-share: tenant usage ".Length..].Split(' ')[0], CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Runs two jobs (sleep 1, sleep 2) on a one-core agent, then makes a job wait behind a blocker and reads the queue-order
    /// line of its explanation; kills the server and the agent, starts both again and reads the line for a new waiting job.
    /// </summary>
    private static async Task<(string Before, string After, long[] Runs, long BlockerSeconds)> QueueLineAcrossRestart(string policy)
    {
        using var s = new ServerProcess(false, 30, null, "--policy", policy);
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("memo");
        var (_, providerKey) = await admin.Provider("one-core");
        using var t = s.Client(key);
        var output = new StringBuilder();
        var agentDir = s.DataDir + "-agent";
        var agent = OneCoreAgent(output, s, providerKey, agentDir);
        try
        {
            var runs = new List<long>();
            foreach (var secs in new[] { "1", "2" })
            {
                var id = (await t.Post("/api/v1/jobs", Api.Job("run" + secs, ["sleep", secs], cpu: 1), HttpStatusCode.Created))["id"]!.GetValue<long>();
                var done = await t.WaitJob(id, j => j.State() == "succeeded", 60);
                runs.Add(Seconds(done));
            }

            var (before, blocker) = await WaitingLine(t, policy);
            var epoch = await Epoch(admin);
            s.Kill();
            agent.Kill(true);
            await agent.WaitForExitAsync();
            s.Start();
            agent = OneCoreAgent(output, s, providerKey, agentDir);
            using var admin2 = s.Admin();
            // Submit only once the new agent has registered: a lease to the previous epoch would be lost on registration.
            for (var i = 0; i < 300 && await Epoch(admin2) == epoch; i++)
            {
                await Task.Delay(100);
            }

            Assert.True(await Epoch(admin2) > epoch, "the agent did not register again:\n" + output);
            using var t2 = s.Client(key);
            var (after, _) = await WaitingLine(t2, policy);
            return (before, after, [.. runs], blocker);
        }
        finally
        {
            agent.Kill(true);
        }
    }

    /// <summary>
    /// Starts a blocker that holds the only core, queues a probe behind it and returns the probe's queue-order line;
    /// then cancels both and returns how long the blocker ran.
    /// </summary>
    private static async Task<(string Line, long BlockerSeconds)> WaitingLine(HttpClient t, string policy)
    {
        var blocker = (await t.Post("/api/v1/jobs", Api.Job("blocker", ["sleep", "60"], cpu: 1), HttpStatusCode.Created))["id"]!.GetValue<long>();
        await t.WaitJob(blocker, j => j.State() == "running", 60);
        var probe = (await t.Post("/api/v1/jobs", Api.Job("probe", ["true"], cpu: 1), HttpStatusCode.Created))["id"]!.GetValue<long>();
        string? line = null;
        for (var i = 0; i < 100 && line is null; i++)
        {
            var lines = (await t.Get($"/api/v1/jobs/{probe}/explain"))["lines"]!.AsArray().Select(l => l!.GetValue<string>()).ToList();
            line = lines.FirstOrDefault(l => l.StartsWith("queue order " + policy, StringComparison.Ordinal));
            if (line is null)
            {
                await Task.Delay(100);
            }
        }

        Assert.NotNull(line);
        await t.Post($"/api/v1/jobs/{probe}/cancel", new { });
        await t.Post($"/api/v1/jobs/{blocker}/cancel", new { });
        var done = await t.WaitJob(blocker, j => j.State() == "cancelled", 60);
        return (line, Seconds(done));
    }
}
