using System.Text.Json.Nodes;
using Microsoft.AspNetCore.OpenApi;
using Microsoft.OpenApi;

namespace Suanli.Server;

/// <summary>
/// What the generated OpenAPI document would not say on its own: every /api/v1 operation needs a bearer API key, and
/// each declares the problem responses it can give (400 validation, 401, 403, 404 for ids, 409 for writes, 413/415 for
/// bodies) with the RFC 9457 problem schema; and the job body (JSON or YAML, docs/job-spec.md) has a schema.
/// </summary>
internal static class OpenApiContract
{
    public static void Configure(OpenApiOptions o)
    {
        o.AddDocumentTransformer((doc, _, _) =>
        {
            doc.Info.Title = "Suanli control plane";
            doc.Info.Description = "Tenants submit jobs; provider agents lease and run them. Errors are RFC 9457 problems with a stable code.";
            doc.Components ??= new OpenApiComponents();
            doc.Components.SecuritySchemes ??= new Dictionary<string, IOpenApiSecurityScheme>();
            doc.Components.SecuritySchemes["apiKey"] = new OpenApiSecurityScheme
            {
                Type = SecuritySchemeType.Http,
                Scheme = "bearer",
                Description = "An API key (operator, tenant or provider role) as Authorization: Bearer KEY",
            };
            doc.Components.Schemas ??= new Dictionary<string, IOpenApiSchema>();
            doc.Components.Schemas["Problem"] = ProblemSchema();
            doc.Components.Schemas["JobSpec"] = JobSpecSchema();
            doc.Security = [new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference("apiKey", doc)] = [] }];
            foreach (var (path, item) in doc.Paths)
            {
                foreach (var (method, op) in item.Operations ?? [])
                {
                    AddProblems(doc, path, method, op);
                    if (path == "/api/v1/jobs" && method == HttpMethod.Post || path == "/api/v1/market/quote" && method == HttpMethod.Post)
                    {
                        var schema = new OpenApiSchemaReference("JobSpec", doc);
                        op.RequestBody = new OpenApiRequestBody
                        {
                            Required = true,
                            Description = "The job document (docs/job-spec.md) as JSON or YAML, or an sbatch script (text/x-shellscript, application/x-sbatch)",
                            Content = new Dictionary<string, OpenApiMediaType>
                            {
                                ["application/json"] = new() { Schema = schema },
                                ["application/yaml"] = new() { Schema = schema },
                                ["application/x-sbatch"] = new() { Schema = new OpenApiSchema { Type = JsonSchemaType.String } },
                            },
                        };
                    }
                }
            }

            return Task.CompletedTask;
        });
    }

    private static void AddProblems(OpenApiDocument doc, string path, HttpMethod method, OpenApiOperation op)
    {
        if (!path.StartsWith("/api/v1/", StringComparison.Ordinal))
        {
            return;
        }

        op.Responses ??= [];
        var body = method == HttpMethod.Post || method == HttpMethod.Put || method == HttpMethod.Patch;
        var codes = new List<(string Code, string Why)>
        {
            ("400", "Invalid request: the problem's errors name each field and rule"),
            ("401", "No valid API key"),
            ("403", "The key's role may not do this"),
        };
        if (path.Contains('{', StringComparison.Ordinal))
        {
            codes.Add(("404", "No such resource (or not visible to this key)"));
        }

        if (method != HttpMethod.Get)
        {
            codes.Add(("409", "Conflict: a state that does not allow this, a stale epoch, or an Idempotency-Key reused with another body"));
        }

        if (body)
        {
            codes.Add(("413", "Request body too large"));
            codes.Add(("415", "Unsupported media type"));
        }

        foreach (var (code, why) in codes)
        {
            if (!op.Responses.ContainsKey(code))
            {
                op.Responses[code] = new OpenApiResponse
                {
                    Description = why,
                    Content = new Dictionary<string, OpenApiMediaType> { ["application/problem+json"] = new() { Schema = new OpenApiSchemaReference("Problem", doc) } },
                };
            }
        }
    }

    private static OpenApiSchema Obj(string description, params (string Name, OpenApiSchema Schema)[] props) => new()
    {
        Type = JsonSchemaType.Object,
        Description = description,
        AdditionalPropertiesAllowed = false,
        Properties = props.ToDictionary(p => p.Name, p => (IOpenApiSchema)p.Schema),
    };

    private static OpenApiSchema Str(string description, int? max = null) => new() { Type = JsonSchemaType.String, Description = description, MaxLength = max };

    private static OpenApiSchema Num(string description, string? min = null, string? max = null, bool integer = false) =>
        new() { Type = integer ? JsonSchemaType.Integer : JsonSchemaType.Number, Description = description, Minimum = min, Maximum = max };

    private static OpenApiSchema Arr(string description, OpenApiSchema items) => new() { Type = JsonSchemaType.Array, Description = description, Items = items };

    private static OpenApiSchema ProblemSchema() => Obj("An RFC 9457 problem",
        ("type", Str("A URI naming the problem")),
        ("title", Str("Short summary")),
        ("status", Num("HTTP status", integer: true)),
        ("detail", Str("What went wrong, for a person")),
        ("code", Str("Stable machine-readable code, e.g. validation_failed, not_found, id_reused")),
        ("errors", Arr("One entry per broken rule", Obj("A broken rule", ("field", Str("Field path, e.g. resources.cpu")), ("rule", Str("Rule name, e.g. range")),
            ("message", Str("Explanation"))))));

    private static OpenApiSchema JobSpecSchema()
    {
        var s = Obj("A job (docs/job-spec.md). Unknown fields are refused; YAML anchors and aliases are refused.",
            ("name", Str("1 to 128 characters", JobDocument.MaxNameLength)),
            ("command", Arr("argv; exactly one of command and script", Str("an argument", 4096))),
            ("script", Str("a shell script; exactly one of command and script")),
            ("env", new OpenApiSchema { Type = JsonSchemaType.Object, Description = "environment variables", AdditionalProperties = Str("value") }),
            ("resources", Obj("per task", ("cpu", Num("cores, > 0 and ≤ 4096, steps of 0.001", "0", "4096")), ("memoryMiB", Num("MiB", "1", "67108864", true)),
                ("accelerator", Str("a model name (or a list of names)")), ("accelerators", Num("cards per task", "0", "64", true)), ("gpuShare", Num("milli-cards for a share of one card", "1", "1000", true)))),
            ("tasks", Num("tasks (gang-scheduled)", "1", null, true)),
            ("timeLimitSeconds", Num("wall-clock limit", "1", null, true)),
            ("priority", Str("priority class: low, normal, high")),
            ("retry", Obj("retry policy", ("maxAttempts", Num("attempts in all", "1", "10", true)), ("onFailure", new OpenApiSchema { Type = JsonSchemaType.Boolean }))),
            ("constraints", Obj("placement constraints", ("regions", Arr("allowed regions", Str("region"))), ("providers", Arr("allowed providers", Str("provider"))),
                ("userRegion", Str("where the user is")), ("maxLatencyMs", Num("latency bound", "1", "100000", true)), ("dataRegion", Str("where the data is")))),
            ("budget", Num("most CNY the job may cost")),
            ("tenant", Str("tenant name or id (operator keys only)")),
            ("dependencies", Arr("afterok:ID, afternotok:ID or afterany:ID", Str("dependency"))),
            ("tier", Str("on-demand (default), reserved or interruptible")),
            ("maxPrice", Num("a spot job's bid per lot, CNY")));
        s.Required = new HashSet<string> { "name", "resources", "timeLimitSeconds" };
        s.Examples = [JsonNode.Parse("""{"name":"hello","command":["/bin/sh","-c","echo hello"],"resources":{"cpu":1,"memoryMiB":64},"timeLimitSeconds":60}""")!];
        return s;
    }
}
