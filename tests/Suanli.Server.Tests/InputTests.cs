using System.Net;
using System.Text;

namespace Suanli.Server.Tests;

public sealed class InputFixture : IDisposable
{
    public InputFixture()
    {
        Server = new ServerProcess(localProvider: false);
        using var admin = Server.Admin();
        (_, TenantKey) = admin.Tenant("inputs").GetAwaiter().GetResult();
    }

    public ServerProcess Server { get; }

    public string TenantKey { get; }

    public void Dispose() => Server.Dispose();
}

public class InputTests(InputFixture f) : IClassFixture<InputFixture>
{
    private const string Ok = "\"name\":\"ok\",\"command\":[\"true\"],\"timeLimitSeconds\":60";

    public static TheoryData<string, string, string> BadJobs() => new()
    {
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":-1,"memoryMiB":64},"timeLimitSeconds":60}""", "resources.cpu" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1,"memoryMiB":99999999999},"timeLimitSeconds":60}""", "resources.memoryMiB" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1e9,"memoryMiB":64},"timeLimitSeconds":60}""", "resources.cpu" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1,"memoryMiB":64,"accelerator":"H100X","accelerators":1},"timeLimitSeconds":60}""", "resources.accelerator" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1,"memoryMiB":64,"accelerators":-2},"timeLimitSeconds":60}""", "resources.accelerators" },
        { "application/json", "{\"name\":\"" + new string('x', 129) + "\",\"command\":[\"true\"],\"resources\":{\"cpu\":1,\"memoryMiB\":64},\"timeLimitSeconds\":60}", "name" },
        { "application/json", """{"name":"evil\u202Etxt.exe","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""", "name" },
        { "application/json", """{"name":"zero\u200Bwidth","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""", "name" },
        { "application/json", """{"name":"x'; DROP TABLE jobs;--","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""", "name" },
        { "application/json", """{"name":"<script>alert(1)</script>","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""", "name" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60,"gpus":4}""", "gpus" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1,"memoryMiB":64}}""", "timeLimitSeconds" },
        { "application/json", """{"name":"a","command":["true"],"script":"echo","resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""", "script" },
        { "application/json", """{"name":"a","resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""", "command" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60,"env":{"1BAD":"x"}}""", "env.1BAD" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60,"priority":"godmode"}""", "priority" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60,"retry":{"maxAttempts":99}}""", "retry.maxAttempts" },
        { "application/json", """{"name":"a","command":["true"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60,"budget":-5}""", "budget" },
        { "application/json", """{"name":"a", "command": [""", "$" },
        { "application/json", "[1,2,3]", "$" },
        { "application/yaml", "name: a\ncommand: [true\nresources: {cpu: 1}", "$" },
        { "application/yaml", "name: a\ncommand: [\"true\"]\nresources: {cpu: 1, memoryMiB: 64}\ntimeLimitSeconds: -1\n", "timeLimitSeconds" },
    };

    private async Task<int> JobCount()
    {
        using var admin = f.Server.Admin();
        return (await admin.Get("/api/v1/jobs?limit=1000"))["items"]!.AsArray().Count;
    }

    [Theory]
    [MemberData(nameof(BadJobs))]
    public async Task BadJob_Is400_NamingTheField_AndStoresNothing(string contentType, string body, string field)
    {
        var before = await JobCount();
        using var c = f.Server.Client(f.TenantKey);
        var resp = await c.PostAsync("/api/v1/jobs", new StringContent(body, Encoding.UTF8, contentType));
        var problem = await resp.Json(HttpStatusCode.BadRequest);
        Assert.Equal("validation_failed", problem["code"]!.GetValue<string>());
        var fields = problem["errors"]!.AsArray().Select(e => e!["field"]!.GetValue<string>()).ToList();
        Assert.Contains(field, fields);
        Assert.All(problem["errors"]!.AsArray(), e => Assert.False(string.IsNullOrEmpty(e!["rule"]!.GetValue<string>())));
        Assert.Equal(before, await JobCount());
    }

    [Fact]
    public async Task YamlJob_IsAccepted_AndChineseNamesAreFine()
    {
        using var c = f.Server.Client(f.TenantKey);
        var yaml = "name: 气象模拟-1\ncommand: [\"true\"]\nresources:\n  cpu: 0.5\n  memoryMiB: 64\ntimeLimitSeconds: 60\npriority: high\nretry:\n  maxAttempts: 2\n";
        var j = await (await c.PostAsync("/api/v1/jobs", new StringContent(yaml, Encoding.UTF8, "application/yaml"))).Json(HttpStatusCode.Created);
        Assert.Equal("气象模拟-1", j["name"]!.GetValue<string>());
        Assert.Equal(2, j["priorityClass"]!.GetValue<int>());
        Assert.Equal(2, j["maxAttempts"]!.GetValue<int>());
    }

    [Fact]
    public async Task OversizedBody_Is413_AndStoresNothing()
    {
        var before = await JobCount();
        using var c = f.Server.Client(f.TenantKey);
        var big = "{\"name\":\"big\",\"command\":[\"true\"],\"script\":\"" + new string('a', 3 << 20) + "\"}";
        // Expect: 100-continue, as a well-behaved client sends a large body: the server refuses before the upload, so
        // the answer cannot race a connection closed mid-upload.
        using var req = new HttpRequestMessage(HttpMethod.Post, "/api/v1/jobs") { Content = new StringContent(big, Encoding.UTF8, "application/json") };
        req.Headers.ExpectContinue = true;
        var resp = await c.SendAsync(req);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, resp.StatusCode);
        Assert.Equal("body_too_large", (await resp.Json(HttpStatusCode.RequestEntityTooLarge))["code"]!.GetValue<string>());
        Assert.Equal(before, await JobCount());
    }

    [Fact]
    public async Task IdempotencyKey_ReplaysTheSameJob()
    {
        using var c = f.Server.Client(f.TenantKey);
        var key = Guid.NewGuid().ToString();
        async Task<HttpResponseMessage> Send()
        {
            using var req = new HttpRequestMessage(HttpMethod.Post, "/api/v1/jobs") { Content = new StringContent("{" + Ok + ",\"resources\":{\"cpu\":1,\"memoryMiB\":64}}", Encoding.UTF8, "application/json") };
            req.Headers.Add("Idempotency-Key", key);
            return await c.SendAsync(req);
        }

        var before = await JobCount();
        var first = await (await Send()).Json(HttpStatusCode.Created);
        var second = await (await Send()).Json(HttpStatusCode.OK);
        Assert.Equal(first["id"]!.GetValue<long>(), second["id"]!.GetValue<long>());
        Assert.Equal(before + 1, await JobCount());

        using var admin = f.Server.Admin();
        using var req2 = new HttpRequestMessage(HttpMethod.Post, "/api/v1/tenants") { Content = JsonContent.Create(new { name = "idem-tenant" }) };
        req2.Headers.Add("Idempotency-Key", key);
        var t1 = await (await admin.SendAsync(req2)).Json(HttpStatusCode.Created);
        using var req3 = new HttpRequestMessage(HttpMethod.Post, "/api/v1/tenants") { Content = JsonContent.Create(new { name = "idem-tenant" }) };
        req3.Headers.Add("Idempotency-Key", key);
        var t2 = await (await admin.SendAsync(req3)).Json(HttpStatusCode.OK);
        Assert.Equal(t1["id"]!.GetValue<long>(), t2["id"]!.GetValue<long>());
    }

    [Fact]
    public async Task Lists_ArePaged()
    {
        using var c = f.Server.Client(f.TenantKey);
        for (var i = 0; i < 5; i++)
        {
            await c.Post("/api/v1/jobs", Api.Job($"page{i}", ["true"]), HttpStatusCode.Created);
        }

        var seen = new List<long>();
        string? after = null;
        do
        {
            var page = await c.Get("/api/v1/jobs?limit=2" + (after is null ? "" : $"&after={after}"));
            Assert.True(page["items"]!.AsArray().Count <= 2);
            seen.AddRange(page["items"]!.AsArray().Select(j => j!["id"]!.GetValue<long>()));
            after = page["next"]?.GetValue<string>();
        }
        while (after is not null);

        Assert.Equal(seen.Distinct().Count(), seen.Count);
        Assert.True(seen.Count >= 5);
        Assert.Equal(seen.Order().ToList(), seen);
        Assert.Equal(HttpStatusCode.BadRequest, (await c.GetAsync("/api/v1/jobs?limit=0")).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await c.GetAsync("/api/v1/jobs?state=sleeping")).StatusCode);
    }
}
