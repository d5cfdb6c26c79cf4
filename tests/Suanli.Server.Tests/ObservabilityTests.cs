using System.Net;
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

        var page = await anon.GetStringAsync("/docs");
        Assert.Contains("openapi/v1.json", page, StringComparison.Ordinal);
    }
}
