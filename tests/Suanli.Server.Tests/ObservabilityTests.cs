using System.Net;
using System.Net.Http.Json;
using System.Text.RegularExpressions;
using System.Text.Json.Nodes;

namespace Suanli.Server.Tests;

public class ObservabilityTests
{
    [Fact]
    public async Task Health_Ready_Metrics_OpenApi_AndApiPage()
    {
        using var s = new ServerProcess(localProvider: false);
        using var anon = new HttpClient { BaseAddress = new Uri(s.Url) };
        Assert.Equal("ok", await anon.GetStringAsync("/healthz"));
        Assert.Equal("ready", await anon.GetStringAsync("/readyz"));
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("obs");
        using var t = s.Client(key);
        await t.Post("/api/v1/jobs", Api.Job("m", ["true"]), HttpStatusCode.Created);
        await Task.Delay(700);
        var metrics = await anon.GetStringAsync("/metrics");
        foreach (var name in new[] { "suanli_queue_depth", "suanli_jobs{state=\"queued\"} 1", "suanli_cycle_duration_seconds", "suanli_leases_total", "suanli_agent_heartbeats_total", "suanli_api_request_duration_seconds_bucket", "suanli_submissions_total" })
        {
            Assert.Contains(name, metrics, StringComparison.Ordinal);
        }

        var openapi = JsonNode.Parse(await anon.GetStringAsync("/openapi/v1.json"))!;
        var paths = openapi["paths"]!.AsObject().Select(p => p.Key).ToList();
        foreach (var p in new[] { "/api/v1/jobs", "/api/v1/jobs/{id}", "/api/v1/tenants", "/api/v1/usage", "/api/v1/agent/lease" })
        {
            Assert.Contains(p, paths);
        }

        // The agent's routes (the shared Protocol assembly's) are the server's routes.
        foreach (var route in new[] { AgentRoutes.Register, AgentRoutes.Heartbeat, AgentRoutes.Lease, AgentRoutes.Report(7).Replace("/7/", "/{id}/", StringComparison.Ordinal), AgentRoutes.Logs(7).Replace("/7/", "/{id}/", StringComparison.Ordinal) })
        {
            Assert.Contains(route, paths);
        }

        var page = await anon.GetStringAsync("/docs");
        Assert.Contains("openapi/v1.json", page, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TheServerLog_HasTimestampedEventIdLines_OnePerCycleWithWork_AndCallersFaultsAreProblemsNotErrors()
    {
        using var s = new ServerProcess(localProvider: false, extraArgs: ["--log-level", "Information"]);
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("logs");
        var (_, providerKey) = await admin.Provider("p");
        using var p = s.Client(providerKey);
        var epoch = (await p.Post("/api/v1/agent/register", new { region = "r", groups = new[] { new { id = "g", milliCpu = 1000, memoryMiB = 1024, nodes = 1, accelerators = 0 } } }))["epoch"]!.GetValue<long>();
        using var t = s.Client(key);
        var job = (await t.Post("/api/v1/jobs", Api.Job("logged", ["true"]), HttpStatusCode.Created))["id"]!.GetValue<long>();
        await t.WaitJob(job, j => j.State() == "leased");

        // The caller's faults, each mapped in the one place: an unknown state (400 naming the field), a finished job
        // cancelled (409 with the store's code), a contract that does not exist (404).
        var bad = await (await p.PostAsJsonAsync($"/api/v1/agent/jobs/{job}/report", new { epoch, state = "exploded" })).Json(HttpStatusCode.BadRequest);
        Assert.Equal(("validation_failed", "state", "enum"), (bad["code"]!.GetValue<string>(), bad["errors"]![0]!["field"]!.GetValue<string>(), bad["errors"]![0]!["rule"]!.GetValue<string>()));
        await p.Post($"/api/v1/agent/jobs/{job}/report", new { epoch, state = "succeeded", exitCode = 0 });
        var twice = await (await t.PostAsync($"/api/v1/jobs/{job}/cancel", null)).Json(HttpStatusCode.Conflict);
        Assert.Equal("invalid_state", twice["code"]!.GetValue<string>());
        var none = await (await t.PostAsJsonAsync("/api/v1/offers/999/accept", new { })).Json(HttpStatusCode.NotFound);
        Assert.Equal("not_found", none["code"]!.GetValue<string>());
        Assert.Equal("https://suanli.dev/problems/not_found", none["type"]!.GetValue<string>());

        var sw = System.Diagnostics.Stopwatch.StartNew();
        var cycle = new Regex(@"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info: Suanli\.Server\.ControlPlane\[1100\] cycle: 1 pending, 1 leased, 0 waiting, 0 preempted, 0 held by admission in [0-9.]+ ms$", RegexOptions.Multiline);
        while (!cycle.IsMatch(s.Output) && sw.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(100);
        }

        Assert.Matches(cycle, s.Output);
        Assert.Matches(new Regex(@"Z info: Suanli\.Server\.ControlPlane\[1000\] recovered 0 active jobs, 0 providers", RegexOptions.Multiline), s.Output);
        // Idle cycles write nothing, and no caller's fault was logged as a server error.
        Assert.Single(cycle.Matches(s.Output));
        Assert.DoesNotContain("fail:", s.Output, StringComparison.Ordinal);
    }
}
