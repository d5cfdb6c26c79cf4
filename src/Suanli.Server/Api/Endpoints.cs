using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>A job as the API shows it.</summary>
public sealed record JobView(long Id, string Name, long TenantId, string State, int Attempt, int MaxAttempts, int PriorityClass, DateTimeOffset SubmittedAt,
    long? ProviderId, string? Group, DateTimeOffset? StartedAt, DateTimeOffset? EndedAt, int? ExitCode, string? Reason, JsonElement Spec)
{
    /// <summary>For an array submission: the ids of all its jobs, in index order (null otherwise).</summary>
    public IReadOnlyList<long>? ArrayJobs { get; init; }

    public static JobView Of(JobRecord j)
    {
        using var d = JsonDocument.Parse(j.Spec);
        return new JobView(j.Id, j.Name, j.TenantId, j.State, j.Attempt, j.MaxAttempts, j.PriorityClass, DateTimeOffset.FromUnixTimeMilliseconds(j.SubmittedMs),
            j.ProviderId, j.GroupId, j.StartedMs is { } s ? DateTimeOffset.FromUnixTimeMilliseconds(s) : null,
            j.EndedMs is { } e ? DateTimeOffset.FromUnixTimeMilliseconds(e) : null, j.ExitCode, j.Reason, d.RootElement.Clone());
    }
}

/// <summary>Request and response bodies (documented in the OpenAPI document).</summary>
public sealed record TenantCreate(string Name, string? Sector, double? Weight);

public sealed record ProviderCreate(string Name, string? Region);

public sealed record KeyCreated(long Id, string Role, long? TenantId, long? ProviderId, string? Key, bool Replayed);

public sealed record ListPage<T>(IReadOnlyList<T> Items, string? Next);

public sealed record ProviderView(long Id, string Name, string Region, string State, long Epoch, DateTimeOffset? LastHeartbeat, IReadOnlyList<GroupOffer> Groups, int ActiveJobs, string? Isolation = null);

public sealed record ReconciliationRow(long JobId, int Attempt, long ProviderId, string Provider, long MeteredSeconds, long? BackendSeconds, long? DifferenceSeconds, string? BackendTres);

public sealed record Reconciliation(IReadOnlyList<ReconciliationRow> Items, int Attempts, int WithBackendRecord, int Differing, long MeteredSeconds, long BackendSeconds);

public sealed record UsageRow(string Key, DateTimeOffset? Bucket, int Jobs, decimal CoreHours, decimal CardHours, decimal Fp16TflopsHours, decimal Fp32TflopsHours, decimal Fp64TflopsHours);

/// <summary>The REST API under /api/v1.</summary>
public static partial class Endpoints
{
    private static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);

    private static Principal Who(HttpContext h) => (Principal)h.Items[RequireRole.ItemKey]!;

    private static string? IdemKey(HttpContext h, out IResult? error)
    {
        error = null;
        var k = h.Request.Headers["Idempotency-Key"].ToString();
        if (k.Length == 0)
        {
            return null;
        }

        if (k.Length > 128 || k.Any(c => c < 0x21 || c > 0x7e))
        {
            error = Problems.Validation("Idempotency-Key", "format", "at most 128 visible ASCII characters");
            return null;
        }

        return k;
    }

    public static void Map(IEndpointRouteBuilder app)
    {
        var api = app.MapGroup("/api/v1");
        var op = new RequireRole(Roles.Operator);
        var opOrTenant = new RequireRole(Roles.Operator, Roles.Tenant);
        var opOrProvider = new RequireRole(Roles.Operator, Roles.Provider);
        var provider = new RequireRole(Roles.Provider);
        MapMarket(api, op, opOrTenant, opOrProvider, new RequireRole(Roles.Operator, Roles.Tenant, Roles.Provider));

        // ---------------------------------------------------------------- tenants
        api.MapPost("/tenants", CreateTenant).AddEndpointFilter(op).Accepts<TenantCreate>("application/json")
            .Produces<TenantRecord>(201).ProducesProblem(400).ProducesProblem(409).WithTags("tenants").WithSummary("Create a tenant (operator)");
        api.MapGet("/tenants", async (HttpContext h, IControlStore s) =>
        {
            var who = Who(h);
            var all = await s.ListTenantsAsync();
            return TypedResults.Ok(new ListPage<TenantRecord>(who.IsOperator ? all : [.. all.Where(t => t.Id == who.TenantId)], null));
        }).AddEndpointFilter(opOrTenant).WithTags("tenants").WithSummary("List tenants (a tenant key sees its own)");
        api.MapGet("/tenants/{id:long}", async (long id, HttpContext h, IControlStore s) =>
        {
            var who = Who(h);
            if (!who.IsOperator && who.TenantId != id)
            {
                return Problems.NotFound($"tenant {id}");
            }

            return await s.GetTenantAsync(id) is { } t ? Results.Ok(t) : Problems.NotFound($"tenant {id}");
        }).AddEndpointFilter(opOrTenant).WithTags("tenants");
        api.MapPost("/tenants/{id:long}/keys", (long id, HttpContext h, IControlStore s, KeyService k) => CreateKey(h, s, k, Roles.Tenant, id))
            .AddEndpointFilter(op).Produces<KeyCreated>(201).WithTags("keys").WithSummary("Create a key for a tenant member (operator); the secret is shown once");

        // ---------------------------------------------------------------- providers
        api.MapPost("/providers", CreateProvider).AddEndpointFilter(op).Accepts<ProviderCreate>("application/json")
            .Produces<ProviderRecord>(201).WithTags("providers").WithSummary("Create a provider (operator)");
        api.MapGet("/providers", async (HttpContext h, IControlStore s, ControlPlane cp) =>
        {
            var who = Who(h);
            var active = cp.ActiveByProvider();
            var isolation = cp.IsolationByProvider();
            var list = (await s.ListProvidersAsync()).Where(p => who.IsOperator || p.Id == who.ProviderId)
                .Select(p => new ProviderView(p.Id, p.Name, p.Region, p.State, p.Epoch, p.LastHeartbeatMs is { } hb ? DateTimeOffset.FromUnixTimeMilliseconds(hb) : null,
                    p.Groups, active.GetValueOrDefault(p.Id), isolation.GetValueOrDefault(p.Id))).ToList();
            return TypedResults.Ok(new ListPage<ProviderView>(list, null));
        }).AddEndpointFilter(opOrProvider).WithTags("providers").WithSummary("List providers and their agents' state");
        api.MapPost("/providers/{id:long}/keys", (long id, HttpContext h, IControlStore s, KeyService k) => CreateKey(h, s, k, Roles.Provider, id))
            .AddEndpointFilter(op).Produces<KeyCreated>(201).WithTags("keys").WithSummary("Create an agent key for a provider (operator)");

        // ---------------------------------------------------------------- keys
        api.MapGet("/keys", async (IControlStore s) => TypedResults.Ok(new ListPage<KeyRecord>(await s.ListKeysAsync(), null)))
            .AddEndpointFilter(op).WithTags("keys").WithSummary("List keys (metadata only)");
        api.MapDelete("/keys/{id:long}", async (long id, KeyService k) => await k.RevokeAsync(id) ? Results.NoContent() : Problems.NotFound($"active key {id}"))
            .AddEndpointFilter(op).WithTags("keys").WithSummary("Revoke a key");

        // ---------------------------------------------------------------- jobs
        api.MapPost("/jobs", SubmitJob).AddEndpointFilter(opOrTenant).Accepts<JsonObject>("application/json", "application/yaml", "text/yaml", "text/x-shellscript", "application/x-sbatch")
            .Produces<JobView>(201).Produces<JobView>(200).ProducesProblem(400).ProducesProblem(413).WithTags("jobs")
            .WithSummary("Submit a job (JSON or YAML, docs/job-spec.md); Idempotency-Key makes retries safe");
        api.MapGet("/jobs", ListJobs).AddEndpointFilter(opOrTenant).Produces<ListPage<JobView>>().WithTags("jobs").WithSummary("List jobs (paged: limit, after)");
        api.MapGet("/jobs/{id:long}", async (long id, HttpContext h, IControlStore s) =>
            await Visible(h, s, id) is { } j ? Results.Ok(JobView.Of(j)) : Problems.NotFound($"job {id}"))
            .AddEndpointFilter(opOrTenant).Produces<JobView>().WithTags("jobs");
        api.MapPost("/jobs/{id:long}/cancel", async (long id, HttpContext h, IControlStore s, ControlPlane cp) =>
        {
            if (await Visible(h, s, id) is null)
            {
                return Problems.NotFound($"job {id}");
            }

            return Results.Ok(JobView.Of(await cp.CancelAsync(id)));
        }).AddEndpointFilter(opOrTenant).Produces<JobView>().WithTags("jobs").WithSummary("Cancel a job (its process tree is stopped)");
        api.MapGet("/jobs/{id:long}/logs", async (long id, long? after, int? limit, int? attempt, HttpContext h, IControlStore s) =>
        {
            if (await Visible(h, s, id) is null)
            {
                return Problems.NotFound($"job {id}");
            }

            if (attempt is < 1)
            {
                return Problems.Validation("attempt", "range", "must be 1 or more");
            }

            var chunks = await s.ReadLogsAsync(id, after ?? 0, Math.Clamp(limit ?? 1000, 1, 10_000), attempt);
            return Results.Ok(new ListPage<LogChunk>(chunks, chunks.Count > 0 ? chunks[^1].Seq.ToString(CultureInfo.InvariantCulture) : null));
        }).AddEndpointFilter(opOrTenant).WithTags("jobs").WithSummary("Read a job's output after a sequence number");
        api.MapGet("/jobs/{id:long}/events", async (long id, HttpContext h, IControlStore s) =>
            await Visible(h, s, id) is null ? Problems.NotFound($"job {id}") : Results.Ok(new ListPage<JobEvent>(await s.EventsAsync(id), null)))
            .AddEndpointFilter(opOrTenant).WithTags("jobs").WithSummary("A job's state history");
        api.MapGet("/jobs/{id:long}/usage", async (long id, HttpContext h, IControlStore s) =>
            await Visible(h, s, id) is null ? Problems.NotFound($"job {id}") : Results.Ok(new ListPage<UsageRecord>(await s.JobUsageAsync(id), null)))
            .AddEndpointFilter(opOrTenant).WithTags("jobs").WithSummary("Metered attempts of a job, with the provider's own accounting beside them");
        api.MapGet("/jobs/{id:long}/explain", async (long id, HttpContext h, IControlStore s, ControlPlane cp) =>
            await Visible(h, s, id) is { } j ? Results.Ok(new { id, state = j.State, lines = cp.Explain(j) }) : Problems.NotFound($"job {id}"))
            .AddEndpointFilter(opOrTenant).WithTags("jobs").WithSummary("Why a job waits, per node group");

        // ---------------------------------------------------------------- usage
        api.MapGet("/usage", Usage).AddEndpointFilter(opOrTenant).Produces<ListPage<UsageRow>>().WithTags("usage")
            .WithSummary("Metered use in standard units, grouped by tenant, sector or provider and a time bucket");

        api.MapGet("/usage/reconciliation", async (HttpContext h, IControlStore s, ControlPlane cp, long? provider, DateTimeOffset? from, DateTimeOffset? to) =>
        {
            var who = Who(h);
            var names = cp.ProviderNames();
            var rows = (await s.UsageAsync(who.IsOperator ? null : who.TenantId, from?.ToUnixTimeMilliseconds() ?? 0, to?.ToUnixTimeMilliseconds() ?? long.MaxValue))
                .Where(u => provider is null || u.ProviderId == provider)
                .Select(u =>
                {
                    var metered = Math.Max(0, (u.EndedMs - u.StartedMs) / 1000);
                    return new ReconciliationRow(u.JobId, u.Attempt, u.ProviderId, names.GetValueOrDefault(u.ProviderId, "?"), metered, u.BackendElapsedSeconds,
                        u.BackendElapsedSeconds is { } b ? metered - b : null, u.BackendTres);
                }).ToList();
            return Results.Ok(new Reconciliation(rows, rows.Count, rows.Count(r => r.BackendSeconds is not null), rows.Count(r => r.DifferenceSeconds is not null and not 0),
                rows.Sum(r => r.MeteredSeconds), rows.Sum(r => r.BackendSeconds ?? 0)));
        }).AddEndpointFilter(opOrTenant).Produces<Reconciliation>().WithTags("usage")
            .WithSummary("Suanli's metering beside each provider system's own accounting (Slurm elapsed and TRES), attempt by attempt");

        // ---------------------------------------------------------------- agents
        var agent = api.MapGroup("/agent").WithTags("agent");
        agent.MapPost("/register", Register).AddEndpointFilter(provider).Accepts<AgentRegister>("application/json").Produces<AgentRegistered>();
        agent.MapPost("/heartbeat", async (HttpContext h, ControlPlane cp) =>
        {
            var (hb, err) = await Problems.ReadAsync<AgentHeartbeat>(h.Request);
            if (err is not null)
            {
                return err;
            }

            var (stop, notices) = await cp.HeartbeatAsync(Who(h).ProviderId!.Value, hb!.Epoch, hb.Running ?? []);
            return Results.Ok(new AgentHeartbeatReply(stop, notices));
        }).AddEndpointFilter(provider).Accepts<AgentHeartbeat>("application/json").Produces<AgentHeartbeatReply>();
        agent.MapPost("/lease", async (HttpContext h, ControlPlane cp) =>
        {
            var (l, err) = await Problems.ReadAsync<AgentLease>(h.Request);
            if (err is not null)
            {
                return err;
            }

            var wait = TimeSpan.FromSeconds(Math.Clamp(l!.WaitSeconds ?? 0, 0, 30));
            return Results.Ok(new LeasePage(await cp.LeasesAsync(Who(h).ProviderId!.Value, l.Epoch, wait, h.RequestAborted)));
        }).AddEndpointFilter(provider).Accepts<AgentLease>("application/json");
        agent.MapPost("/jobs/{id:long}/report", async (long id, HttpContext h, ControlPlane cp) =>
        {
            var (r, err) = await Problems.ReadAsync<AgentReport>(h.Request);
            if (err is not null)
            {
                return err;
            }

            if (r!.ObservedMs is < 0 or > 253_402_300_799_999 || r.ObservedStartMs is < 0 or > 253_402_300_799_999)
            {
                return Problems.Validation(r.ObservedMs is < 0 or > 253_402_300_799_999 ? "observedMs" : "observedStartMs", "range", "observed times are Unix milliseconds between 1970 and 9999");
            }

            if (r!.State is null || r.Message is { Length: > 4096 } || r.BackendTres is { Length: > 1024 })
            {
                return Problems.Validation(r.State is null ? "state" : r.Message is { Length: > 4096 } ? "message" : "backendTres", r.State is null ? "required" : "length",
                    "state is required; message at most 4096 characters; backendTres at most 1024");
            }

            return Results.Ok(JobView.Of(await cp.ReportAsync(Who(h).ProviderId!.Value, r!.Epoch, id, r.State, r.ExitCode, r.Message, r.BackendElapsedSeconds, r.BackendTres, r.ObservedMs, r.ObservedStartMs)));
        }).AddEndpointFilter(provider).Accepts<AgentReport>("application/json");
        agent.MapPost("/jobs/{id:long}/logs", async (long id, HttpContext h, ControlPlane cp) =>
        {
            var (l, err) = await Problems.ReadAsync<AgentLog>(h.Request, 1 << 20);
            if (err is not null)
            {
                return err;
            }

            if (l!.Offset is < 0)
            {
                return Problems.Validation("offset", "range", "must not be negative");
            }

            await cp.AppendLogAsync(Who(h).ProviderId!.Value, l.Epoch, id, l.Offset, l.Data ?? "");
            return Results.NoContent();
        }).AddEndpointFilter(provider).Accepts<AgentLog>("application/json");
    }

    private static async Task<JobRecord?> Visible(HttpContext h, IControlStore s, long id)
    {
        var who = Who(h);
        var j = await s.GetJobAsync(id);
        return j is not null && (who.IsOperator || j.TenantId == who.TenantId) ? j : null;
    }

    /// <summary>
    /// A creating POST with Idempotency-Key: a key this caller used before answers with the resource it made; otherwise
    /// <paramref name="create"/> validates the body and makes the resource, and the key is remembered.
    /// </summary>
    private static async Task<IResult> CreateOnce<T>(HttpContext h, IControlStore s, TimeProvider time, string kind,
        Func<long, Task<T?>> find, Func<JsonObject, List<FieldError>, IdempotencyClaim?, Task<(T Created, long Id)?>> create)
        where T : class
    {
        var key = IdemKey(h, out var bad);
        if (bad is not null)
        {
            return bad;
        }

        var (text, err) = await Problems.ReadBodyAsync(h.Request, 1 << 16);
        if (err is not null)
        {
            return err;
        }

        return await Idempotent(s, $"{kind}:{Who(h).KeyId}", key, text!,
            async prior => long.TryParse(prior, CultureInfo.InvariantCulture, out var priorId) && await find(priorId) is { } existing ? Results.Ok(existing) : null,
            async once =>
            {
                var (body, bad) = Problems.ParseObject(text!);
                if (bad is not null)
                {
                    return bad;
                }

                var errors = new List<FieldError>();
                var made = await create(body!, errors, once);
                return made is not { } m ? Problems.Validation(new ValidationException(errors)) : Results.Created($"/api/v1/{kind}s/{m.Id}", m.Created);
            });
    }

    private static readonly SemaphoreSlim[] IdempotencyLocks = [.. Enumerable.Range(0, 64).Select(_ => new SemaphoreSlim(1, 1))];

    /// <summary>
    /// Runs a creating request at most once per (scope, Idempotency-Key): requests with one key are serialised (so 20
    /// parallel replays make one resource), a replay with the same body gets the resource made the first time
    /// (<paramref name="replay"/>), one with a different body is refused with 409 <c>id_reused</c>. Without a key the
    /// request simply runs. <paramref name="create"/> gets the claim to record in the transaction that makes the
    /// resource (null without a key), so a crash can never leave a resource whose key was not recorded.
    /// </summary>
    private static async Task<IResult> Idempotent(IControlStore s, string scope, string? key, string body,
        Func<string, Task<IResult?>> replay, Func<IdempotencyClaim?, Task<IResult>> create)
    {
        if (key is null)
        {
            return await create(null);
        }

        var hash = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(body)));
        var gate = IdempotencyLocks[(int)((uint)StringComparer.Ordinal.GetHashCode(scope + "\n" + key) % (uint)IdempotencyLocks.Length)];
        await gate.WaitAsync();
        try
        {
            if (await s.IdempotentGetAsync(scope, key) is { } prior)
            {
                if (prior.RequestHash is not null && prior.RequestHash != hash)
                {
                    return Problems.Of(409, "id_reused", "Idempotency-Key: already used with a different request body; use a new key for a new request");
                }

                return await replay(prior.Resource) ?? Problems.Of(409, "id_reused", "Idempotency-Key: the resource it made no longer exists; use a new key");
            }

            return await create(new IdempotencyClaim(scope, key, hash));
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>A name-like field: 1..max characters of the name alphabet, no '/'; <paramref name="fallback"/> when absent.</summary>
    private static string? Label(JsonObject body, string field, int max, string? fallback, List<FieldError> errors)
    {
        var value = body[field] is JsonValue v && v.TryGetValue<string>(out var x) ? x : body[field] is null ? fallback : null;
        if (value is null || value.Length == 0 || value.Length > max || value.Contains('/', StringComparison.Ordinal))
        {
            errors.Add(new FieldError(field, "length", $"{(fallback is null ? "is required: " : "must be ")}a string of 1 to {max} characters without '/'"));
            return null;
        }

        JobDocument.CheckName(value, field, errors);
        return value;
    }

    private static void OnlyFields(JsonObject body, string[] allowed, List<FieldError> errors)
    {
        foreach (var (k, _) in body)
        {
            if (!allowed.Contains(k))
            {
                errors.Add(new FieldError(k, "unknown", $"unknown field; allowed: {string.Join(", ", allowed)}"));
            }
        }
    }

    private static Task<IResult> CreateTenant(HttpContext h, IControlStore s, ControlPlane cp, TimeProvider time) =>
        CreateOnce(h, s, time, "tenant", id => s.GetTenantAsync(id, h.RequestAborted), async (body, errors, once) =>
        {
            var name = Label(body, "name", JobDocument.MaxNameLength, null, errors);
            var sector = Label(body, "sector", 64, "general", errors);
            var weight = 1.0;
            if (body["weight"] is { } w && !(w is JsonValue wv && wv.TryGetValue(out weight) && weight is > 0 and <= 1000))
            {
                errors.Add(new FieldError("weight", "range", "must be a number above 0 and at most 1000"));
            }

            OnlyFields(body, ["name", "sector", "weight"], errors);
            if (errors.Count > 0)
            {
                return null;
            }

            var t = await cp.CreateTenantAsync(name!, sector!, weight, once, h.RequestAborted);
            return (t, t.Id);
        });

    private static Task<IResult> CreateProvider(HttpContext h, IControlStore s, ControlPlane cp, TimeProvider time) =>
        CreateOnce(h, s, time, "provider", id => s.GetProviderAsync(id, h.RequestAborted), async (body, errors, once) =>
        {
            var name = Label(body, "name", 64, null, errors);
            var region = Label(body, "region", 64, "default", errors);
            OnlyFields(body, ["name", "region"], errors);
            if (errors.Count > 0)
            {
                return null;
            }

            var p = await cp.CreateProviderAsync(name!, region!, once, h.RequestAborted);
            return (p, p.Id);
        });

    private static async Task<IResult> CreateKey(HttpContext h, IControlStore s, KeyService keys, string role, long id)
    {
        var idem = IdemKey(h, out var bad);
        if (bad is not null)
        {
            return bad;
        }

        var exists = role == Roles.Tenant ? await s.GetTenantAsync(id) is not null : await s.GetProviderAsync(id) is not null;
        if (!exists)
        {
            return Problems.NotFound($"{role} {id}");
        }

        var (text, err) = await Problems.ReadBodyAsync(h.Request, 1 << 16);
        if (err is not null)
        {
            return err;
        }

        return await Idempotent(s, $"key:{role}:{id}:{Who(h).KeyId}", idem, text!,
            // The secret is shown once; a replay names the key it made without the secret.
            prior => Task.FromResult<IResult?>(Results.Ok(new KeyCreated(long.Parse(prior, CultureInfo.InvariantCulture), role, role == Roles.Tenant ? id : null,
                role == Roles.Provider ? id : null, null, true))),
            async once =>
            {
                var (rec, secret) = await keys.CreateAsync(role, role == Roles.Tenant ? id : null, role == Roles.Provider ? id : null, once);
                return Results.Created($"/api/v1/keys/{rec.Id}", new KeyCreated(rec.Id, role, rec.TenantId, rec.ProviderId, secret, false));
            });
    }

    /// <summary>
    /// A job body by its Content-Type: an sbatch script (text/x-shellscript, application/x-sbatch, or neither JSON nor
    /// YAML and shaped like one) or a YAML/JSON document; <c>?tenant=</c> names the tenant for operator keys.
    /// </summary>
    private static JobDocument ParseJobBody(HttpContext h, string text, ControlPlane cp)
    {
        var type = h.Request.ContentType ?? "";
        var doc = type.StartsWith("text/x-shellscript", StringComparison.Ordinal) || type.StartsWith("application/x-sbatch", StringComparison.Ordinal)
            || (!type.Contains("json", StringComparison.Ordinal) && !type.Contains("yaml", StringComparison.Ordinal) && Sbatch.Looks(text))
            ? Sbatch.ToJob(text, cp.Catalogue)
            : JobDocument.Parse(text, cp.Catalogue);
        return h.Request.Query["tenant"].ToString() is { Length: > 0 } qt ? doc with { Tenant = qt } : doc;
    }

    private static async Task<IResult> SubmitJob(HttpContext h, IControlStore s, ControlPlane cp)
    {
        var who = Who(h);
        var idem = IdemKey(h, out var bad);
        if (bad is not null)
        {
            return bad;
        }

        var (text, err) = await Problems.ReadBodyAsync(h.Request, JobDocument.MaxBodyBytes);
        if (err is not null)
        {
            return err;
        }

        JobDocument doc;
        try
        {
            doc = ParseJobBody(h, text!, cp);
        }
        catch (ValidationException e)
        {
            return Problems.Validation(e);
        }

        long tenantId;
        if (who.IsOperator)
        {
            var tenants = cp.Tenants();
            var t = doc.Tenant is null ? null : tenants.Values.FirstOrDefault(x => x.Name == doc.Tenant || x.Id.ToString(CultureInfo.InvariantCulture) == doc.Tenant);
            if (t is null)
            {
                return Problems.Validation("tenant", "required", "an operator submits for a tenant: give tenant (name or id) of an existing tenant");
            }

            tenantId = t.Id;
        }
        else
        {
            if (doc.Tenant is not null)
            {
                return Problems.Validation("tenant", "forbidden", "a tenant key submits for its own tenant; leave tenant out");
            }

            tenantId = who.TenantId!.Value;
        }

        foreach (var (kind, dep) in doc.DependencyList)
        {
            if (await s.GetJobAsync(dep) is not { } other || other.TenantId != tenantId)
            {
                return Problems.Validation("dependencies", "known", $"{kind}:{dep}: the tenant has no job {dep}");
            }
        }

        if (doc.ArrayTasks.Count > 0)
        {
            // An array: one job per index; the answer is the first element with every element's id.
            var ids = new List<long>();
            JobRecord? first = null;
            var anyNew = false;
            foreach (var (index, element) in doc.ArrayElements())
            {
                var el = element with { Tenant = null };
                if (first is not null)
                {
                    el = el with { Env = new Dictionary<string, string>(el.Env, StringComparer.Ordinal) { ["SLURM_ARRAY_JOB_ID"] = first.Id.ToString(CultureInfo.InvariantCulture) } };
                }

                var (rec, again) = await cp.SubmitAsync(tenantId, el, idem is null ? null : $"{idem}#{index.ToString(CultureInfo.InvariantCulture)}");

                first ??= rec;
                anyNew |= !again;
                ids.Add(rec.Id);
            }

            var arrayView = JobView.Of(first!) with { ArrayJobs = ids };
            return anyNew ? Results.Created($"/api/v1/jobs/{first!.Id}", arrayView) : Results.Ok(arrayView);
        }

        var (job, replayed) = await cp.SubmitAsync(tenantId, doc with { Tenant = null }, idem);
        var view = JobView.Of(job);
        return replayed ? Results.Ok(view) : Results.Created($"/api/v1/jobs/{job.Id}", view);
    }

    private static async Task<IResult> ListJobs(HttpContext h, IControlStore s, string? state, int? limit, string? after)
    {
        var who = Who(h);
        if (state is not null && !JobStates.All.Contains(state))
        {
            return Problems.Validation("state", "enum", $"must be one of {string.Join(", ", JobStates.All)}");
        }

        long? cursor = null;
        if (after is not null)
        {
            if (!long.TryParse(after, NumberStyles.None, CultureInfo.InvariantCulture, out var c))
            {
                return Problems.Validation("after", "format", "must be the 'next' cursor of a previous page");
            }

            cursor = c;
        }

        if (limit is < 1 or > 1000)
        {
            return Problems.Validation("limit", "range", "must be from 1 to 1000");
        }

        var page = await s.ListJobsAsync(new JobQuery(who.IsOperator ? null : who.TenantId, state, cursor, limit ?? 100));
        return Results.Ok(new ListPage<JobView>([.. page.Items.Select(JobView.Of)], page.Next));
    }

    private static async Task<IResult> Usage(HttpContext h, IControlStore s, ControlPlane cp, string? groupBy, string? bucket, DateTimeOffset? from, DateTimeOffset? to)
    {
        var who = Who(h);
        groupBy ??= "tenant";
        bucket ??= "none";
        if (groupBy is not ("tenant" or "sector" or "provider"))
        {
            return Problems.Validation("groupBy", "enum", "must be tenant, sector or provider");
        }

        if (bucket is not ("none" or "hour" or "day"))
        {
            return Problems.Validation("bucket", "enum", "must be none, hour or day");
        }

        var f = from?.ToUnixTimeMilliseconds() ?? 0;
        var t = to?.ToUnixTimeMilliseconds() ?? long.MaxValue;
        var rows = await s.UsageAsync(who.IsOperator ? null : who.TenantId, f, t);
        var tenants = cp.Tenants();
        var providers = cp.ProviderNames();
        var bucketMs = bucket switch { "hour" => 3_600_000L, "day" => 86_400_000L, _ => 0L };
        var grouped = rows.GroupBy(u => (Key: groupBy switch
        {
            "sector" => tenants.TryGetValue(u.TenantId, out var tt) ? tt.Sector : "unknown",
            "provider" => providers.GetValueOrDefault(u.ProviderId, u.ProviderId.ToString(CultureInfo.InvariantCulture)),
            _ => tenants.TryGetValue(u.TenantId, out var tn) ? tn.Name : u.TenantId.ToString(CultureInfo.InvariantCulture),
        }, Bucket: bucketMs == 0 ? (long?)null : u.StartedMs / bucketMs * bucketMs))
            .OrderBy(g => g.Key.Key, StringComparer.Ordinal).ThenBy(g => g.Key.Bucket)
            .Select(g =>
            {
                var q = g.Select(cp.Standard).Aggregate(default(Core.Units.StandardQuantity), (a, b) => a + b);
                return new UsageRow(g.Key.Key, g.Key.Bucket is { } b ? DateTimeOffset.FromUnixTimeMilliseconds(b) : null, g.Select(x => x.JobId).Distinct().Count(),
                    decimal.Round(q.CoreHours, 6), decimal.Round(q.CardHours, 6), decimal.Round(q.Fp16TflopsHours, 6), decimal.Round(q.Fp32TflopsHours, 6), decimal.Round(q.Fp64TflopsHours, 6));
            }).ToList();
        return Results.Ok(new ListPage<UsageRow>(grouped, null));
    }

    private static async Task<IResult> Register(HttpContext h, ControlPlane cp, IControlStore s)
    {
        var (reg, err) = await Problems.ReadAsync<AgentRegister>(h.Request);
        if (err is not null)
        {
            return err;
        }

        var errors = new List<FieldError>();
        if (reg?.Isolation is { Length: > 400 })
        {
            errors.Add(new FieldError("isolation", "length", "at most 400 characters"));
        }

        if (reg?.Groups is not { Count: > 0 and <= 256 })
        {
            errors.Add(new FieldError("groups", "length", "an agent offers 1 to 256 node groups"));
        }
        else
        {
            for (var i = 0; i < reg.Groups.Count; i++)
            {
                var g = reg.Groups[i];
                var at = $"groups[{i}]";
                if (string.IsNullOrEmpty(g.Id) || g.Id.Length > 64 || g.Id.Contains('/', StringComparison.Ordinal))
                {
                    errors.Add(new FieldError($"{at}.id", "length", "1 to 64 characters, no '/'"));
                }

                if (g.MilliCpu is < 1 or > 4_096_000 || g.MemoryMiB is < 1 or > 64L * 1024 * 1024 || g.Nodes is < 1 or > 100_000 || g.Accelerators is < 0 or > 64)
                {
                    errors.Add(new FieldError(at, "range", "milliCpu 1..4096000, memoryMiB 1..67108864, nodes 1..100000, accelerators 0..64"));
                }

                if (g.Accelerator is not null && !cp.Catalogue.Contains(g.Accelerator))
                {
                    errors.Add(new FieldError($"{at}.accelerator", "known", $"unknown accelerator '{g.Accelerator}'"));
                }

                if (g.PricePerNodeHour is < 0)
                {
                    errors.Add(new FieldError($"{at}.pricePerNodeHour", "range", "must not be negative"));
                }
            }

            if (reg.Groups.Select(g => g.Id).Distinct().Count() != reg.Groups.Count)
            {
                errors.Add(new FieldError("groups", "unique", "group ids must be unique"));
            }
        }

        if (errors.Count > 0)
        {
            return Problems.Validation(new ValidationException(errors));
        }

        var who = Who(h);
        var current = await s.GetProviderAsync(who.ProviderId!.Value);
        ProviderRecord p;
        p = await cp.RegisterAsync(who.ProviderId!.Value, reg!.Region ?? current?.Region ?? "default", reg.Groups, reg.Isolation, reg.TakeOver);

        var lease = cp.Options.LostAfter.TotalSeconds;
        return Results.Ok(new AgentRegistered(p.Id, p.Name, p.Epoch, Math.Max(0.2, lease / 6), lease, cp.Options.AgentOutageGrace.TotalSeconds));
    }
}
