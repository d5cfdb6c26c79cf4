using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Suanli.Core.Domain;

namespace Suanli.Server;

/// <summary>A field that broke a rule.</summary>
public sealed record FieldError(string Field, string Rule, string Message);

/// <summary>Resources of one task.</summary>
public sealed record JobResources(decimal Cpu, long MemoryMiB, IReadOnlyList<string> Accelerators, int AcceleratorCount, int GpuMilli);

/// <summary>Retry policy: attempts in all (1 = no retry); a failed exit is retried only with <see cref="OnFailure"/>.</summary>
public sealed record RetryPolicy(int MaxAttempts, bool OnFailure);

/// <summary>
/// A validated job document (docs/job-spec.md). Parsing is strict: unknown fields, wrong types and out-of-range values
/// are errors naming the field and the rule.
/// </summary>
public sealed record JobDocument(
    string Name,
    IReadOnlyList<string>? Command,
    string? Script,
    IReadOnlyDictionary<string, string> Env,
    JobResources Resources,
    int Tasks,
    long TimeLimitSeconds,
    int PriorityClass,
    RetryPolicy Retry,
    JobConstraints Constraints,
    decimal? Budget,
    string? Tenant)
{
    public const int MaxNameLength = 128;

    /// <summary>"sbatch" when the job came from a batch script (runs it as a file, with SLURM_* variables); else null.</summary>
    public string? Format { get; init; }

    /// <summary>
    /// Jobs this one waits for, Slurm-style: "afterok:ID" (ended succeeded), "afternotok:ID" (ended failed, cancelled or
    /// lost) or "afterany:ID" (ended). All must hold; one that can no longer hold cancels the job.
    /// </summary>
    public IReadOnlyList<string> Dependencies { get; init; } = [];

    /// <summary>The sales tier the job buys on priced capacity: on-demand (default), reserved or interruptible (spot).</summary>
    public string Tier { get; init; } = Suanli.Core.Market.Tiers.OnDemand;

    /// <summary>A spot job's bid in the auction: the most it pays per lot (card-hour or core-hour), in fen.</summary>
    public long? MaxPriceFen { get; init; }

    /// <summary>Array task indices (from #SBATCH --array): the submission becomes one job per index; empty otherwise.</summary>
    public IReadOnlyList<int> ArrayTasks { get; init; } = [];

    /// <summary>For array elements: at most this many of the array's jobs leased or running at once (Slurm's "%N").</summary>
    public int? ArrayLimit { get; init; }

    /// <summary>The array an element belongs to: SLURM_ARRAY_JOB_ID, or the element's own id for the first one.</summary>
    public long? ArrayKey(long ownId) =>
        ArrayLimit is null ? null : Env.TryGetValue("SLURM_ARRAY_JOB_ID", out var a) && long.TryParse(a, CultureInfo.InvariantCulture, out var k) ? k : ownId;

    /// <summary>
    /// The jobs of an array submission: one per index, each with SLURM_ARRAY_TASK_ID and the array's bounds in its
    /// environment (SLURM_ARRAY_JOB_ID is the first element's id and is added once that is known).
    /// </summary>
    public IEnumerable<(int Index, JobDocument Job)> ArrayElements()
    {
        foreach (var i in ArrayTasks)
        {
            var env = new Dictionary<string, string>(Env, StringComparer.Ordinal)
            {
                ["SLURM_ARRAY_TASK_ID"] = i.ToString(CultureInfo.InvariantCulture),
                ["SLURM_ARRAY_TASK_COUNT"] = ArrayTasks.Count.ToString(CultureInfo.InvariantCulture),
                ["SLURM_ARRAY_TASK_MIN"] = ArrayTasks[0].ToString(CultureInfo.InvariantCulture),
                ["SLURM_ARRAY_TASK_MAX"] = ArrayTasks[^1].ToString(CultureInfo.InvariantCulture),
            };
            var name = $"{Name}_{i.ToString(CultureInfo.InvariantCulture)}";
            yield return (i, this with { Name = name.Length <= MaxNameLength ? name : Name, Env = env, ArrayTasks = [] });
        }
    }

    /// <summary>The parsed <see cref="Dependencies"/>: (kind, job id).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public IEnumerable<(string Kind, long Job)> DependencyList =>
        Dependencies.Select(d => (d[..d.IndexOf(':', StringComparison.Ordinal)], long.Parse(d[(d.IndexOf(':', StringComparison.Ordinal) + 1)..], CultureInfo.InvariantCulture)));

    /// <summary>Validates Slurm-style dependency items ("afterok:12"; a Slurm list "afterok:12:13" is split into items).</summary>
    public static List<string> ParseDependencies(IEnumerable<string> items, string field, List<FieldError> errors)
    {
        var result = new List<string>();
        foreach (var item in items)
        {
            var parts = item.Split(':');
            if (parts.Length < 2 || parts[0] is not ("afterok" or "afternotok" or "afterany"))
            {
                errors.Add(new FieldError(field, "format", $"'{item}' is not afterok:ID, afternotok:ID or afterany:ID"));
                continue;
            }

            foreach (var id in parts.Skip(1))
            {
                if (long.TryParse(id, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n > 0)
                {
                    result.Add($"{parts[0]}:{n.ToString(CultureInfo.InvariantCulture)}");
                }
                else
                {
                    errors.Add(new FieldError(field, "format", $"'{id}' in '{item}' is not a job id"));
                }
            }
        }

        if (result.Count > 64)
        {
            errors.Add(new FieldError(field, "length", "at most 64 dependencies"));
        }

        return result;
    }

    public const int MaxBodyBytes = 1 << 20;
    public const long MaxTimeLimitSeconds = 366L * 24 * 3600;
    private static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web) { WriteIndented = false };

    /// <summary>Named priority classes.</summary>
    public static IReadOnlyDictionary<string, int> PriorityClasses { get; } = new Dictionary<string, int>
    {
        ["low"] = 0, ["normal"] = 1, ["high"] = 2, ["urgent"] = 3,
    };

    private static readonly HashSet<string> TopFields = ["name", "command", "script", "env", "resources", "tasks", "timeLimitSeconds", "priority", "retry", "constraints", "budget", "tenant", "dependencies", "tier", "maxPrice"];

    /// <summary>Parses YAML or JSON (JSON is YAML; a body starting with '{' is read as JSON for exact error positions).</summary>
    public static JobDocument Parse(string text, AcceleratorCatalogue catalogue)
    {
        // Bounded and strict before anything is expanded: no YAML aliases, no duplicate keys, valid Unicode, finite numbers.
        var node = text.TrimStart().StartsWith('{') ? StrictInput.ParseJson(text) : StrictInput.ParseYaml(text);

        if (node is not JsonObject obj)
        {
            throw new ValidationException([new FieldError("$", "type", "the job must be an object")]);
        }

        return FromJson(obj, catalogue);
    }

    /// <summary>The canonical JSON of this document (stored with the job).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, Web);

    /// <summary>Reads a stored canonical document back (trusted input).</summary>
    public static JobDocument FromStored(string json) => JsonSerializer.Deserialize<JobDocument>(json, Web)!;

    /// <summary>Task resources in the core's units.</summary>
    public TaskResources ToTask() => new((long)(Resources.Cpu * 1000), Resources.MemoryMiB, Resources.AcceleratorCount,
        Resources.AcceleratorCount > 0 ? Resources.GpuMilli : 0, Resources.Accelerators.Count > 0 ? Resources.Accelerators : null);

    private static JobDocument FromJson(JsonObject o, AcceleratorCatalogue catalogue)
    {
        var errors = new List<FieldError>();
        foreach (var (k, _) in o)
        {
            if (!TopFields.Contains(k))
            {
                errors.Add(new FieldError(k, "unknown", $"unknown field '{Clip(k)}'; allowed: {string.Join(", ", TopFields)}"));
            }
        }

        var name = Str(o, "name", errors, required: true, max: MaxNameLength);
        if (name is not null)
        {
            CheckName(name, "name", errors);
        }

        List<string>? command = null;
        if (o["command"] is { } cmdNode)
        {
            if (cmdNode is not JsonArray arr || arr.Count == 0 || arr.Count > 256)
            {
                errors.Add(new FieldError("command", "type", "must be a list of 1 to 256 strings (argv)"));
            }
            else
            {
                command = [];
                for (var i = 0; i < arr.Count; i++)
                {
                    if (arr[i] is JsonValue v && v.TryGetValue<string>(out var s) && s.Length <= 4096 && !s.Contains('\0', StringComparison.Ordinal))
                    {
                        command.Add(s);
                    }
                    else
                    {
                        errors.Add(new FieldError($"command[{i}]", "type", "must be a string of at most 4096 characters without NUL"));
                    }
                }
            }
        }

        var script = Str(o, "script", errors, required: false, max: 65536);
        if (command is null && script is null && o["command"] is null)
        {
            errors.Add(new FieldError("command", "required", "give either command (argv list) or script"));
        }
        else if (o["command"] is not null && script is not null)
        {
            errors.Add(new FieldError("script", "exclusive", "give either command or script, not both"));
        }

        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        if (o["env"] is { } envNode)
        {
            if (envNode is not JsonObject envObj || envObj.Count > 128)
            {
                errors.Add(new FieldError("env", "type", "must be a map of at most 128 NAME: value entries"));
            }
            else
            {
                foreach (var (k, v) in envObj)
                {
                    if (!IsEnvName(k))
                    {
                        errors.Add(new FieldError($"env.{Clip(k)}", "format", "names are letters, digits and '_', not starting with a digit, at most 128 characters"));
                    }
                    else if (v is JsonValue jv && (jv.TryGetValue<string>(out var sv) || (sv = jv.ToJsonString()) is not null) && sv.Length <= 32768 && !sv.Contains('\0', StringComparison.Ordinal))
                    {
                        env[k] = sv;
                    }
                    else
                    {
                        errors.Add(new FieldError($"env.{k}", "type", "must be a scalar of at most 32768 characters without NUL"));
                    }
                }
            }
        }

        var resources = ParseResources(o["resources"], catalogue, errors);
        var tasks = (int)Int(o, "tasks", errors, 1, 1024, defaultValue: 1);
        var limit = Int(o, "timeLimitSeconds", errors, 1, MaxTimeLimitSeconds, required: true);
        var priority = 1;
        if (o["priority"] is { } pNode)
        {
            if (pNode is JsonValue pv && pv.TryGetValue<string>(out var ps) && PriorityClasses.TryGetValue(ps, out var pc))
            {
                priority = pc;
            }
            else
            {
                errors.Add(new FieldError("priority", "enum", $"must be one of {string.Join(", ", PriorityClasses.Keys)}"));
            }
        }

        var retry = new RetryPolicy(1, false);
        if (o["retry"] is { } rNode)
        {
            if (rNode is not JsonObject r)
            {
                errors.Add(new FieldError("retry", "type", "must be an object {maxAttempts, onFailure}"));
            }
            else
            {
                Unknown(r, "retry", ["maxAttempts", "onFailure"], errors);
                retry = new RetryPolicy((int)Int(r, "maxAttempts", errors, 1, 10, defaultValue: 1, path: "retry."), Bool(r, "onFailure", errors, "retry."));
            }
        }

        var constraints = ParseConstraints(o["constraints"], errors);
        decimal? budget = null;
        if (o["budget"] is { } bNode)
        {
            if (bNode is JsonValue bv && bv.TryGetValue<decimal>(out var b) && b >= 0 && b <= 1_000_000_000m)
            {
                budget = b;
            }
            else
            {
                errors.Add(new FieldError("budget", "range", "must be a number from 0 to 1000000000 (CNY)"));
            }
        }

        var tenant = Str(o, "tenant", errors, required: false, max: MaxNameLength);
        var tier = Str(o, "tier", errors, required: false, max: 32) ?? Suanli.Core.Market.Tiers.OnDemand;
        if (!Suanli.Core.Market.Tiers.IsKnown(tier))
        {
            errors.Add(new FieldError("tier", "enum", $"must be one of {string.Join(", ", Suanli.Core.Market.Tiers.All)}, not '{tier}'"));
        }

        long? maxPrice = null;
        if (o["maxPrice"] is { } mpNode)
        {
            if (mpNode is JsonValue mv && mv.TryGetValue<decimal>(out var mp) && mp > 0 && mp <= 1_000_000m && mp * 100 == decimal.Truncate(mp * 100))
            {
                maxPrice = (long)(mp * 100);
            }
            else
            {
                errors.Add(new FieldError("maxPrice", "range", "must be a positive amount of CNY per lot (card-hour or core-hour) with at most two decimals, up to 1000000"));
            }

            if (tier != Suanli.Core.Market.Tiers.Interruptible)
            {
                errors.Add(new FieldError("maxPrice", "tier", "is the bid of an interruptible (spot) job; set tier: interruptible"));
            }
        }
        else if (tier == Suanli.Core.Market.Tiers.Interruptible)
        {
            errors.Add(new FieldError("maxPrice", "required", "an interruptible (spot) job bids in the auction: give the most it pays per lot in CNY"));
        }

        List<string> dependencies = [];
        if (o["dependencies"] is { } depNode)
        {
            if (depNode is JsonArray deps && deps.All(d => d is JsonValue v && v.TryGetValue<string>(out _)))
            {
                dependencies = ParseDependencies(deps.Select(d => d!.GetValue<string>()), "dependencies", errors);
            }
            else
            {
                errors.Add(new FieldError("dependencies", "type", "must be a list of strings such as \"afterok:12\""));
            }
        }

        if (errors.Count > 0)
        {
            throw new ValidationException(errors);
        }

        return new JobDocument(name!, command, script, env, resources!, tasks, limit, priority, retry, constraints, budget, tenant) { Dependencies = dependencies, Tier = tier, MaxPriceFen = maxPrice };
    }

    private static JobResources? ParseResources(JsonNode? node, AcceleratorCatalogue catalogue, List<FieldError> errors)
    {
        if (node is not JsonObject r)
        {
            errors.Add(new FieldError("resources", node is null ? "required" : "type", "must be an object {cpu, memoryMiB, accelerator, accelerators}"));
            return null;
        }

        Unknown(r, "resources", ["cpu", "memoryMiB", "accelerator", "accelerators", "gpuShare"], errors);
        decimal cpu = 0;
        if (r["cpu"] is JsonValue cv && cv.TryGetValue<decimal>(out cpu) && cpu > 0 && cpu <= 4096 && cpu * 1000 == decimal.Truncate(cpu * 1000))
        {
            // ok
        }
        else
        {
            errors.Add(new FieldError("resources.cpu", r["cpu"] is null ? "required" : "range", "must be a number of cores above 0 and at most 4096, in steps of 0.001"));
        }

        var mem = Int(r, "memoryMiB", errors, 1, 64L * 1024 * 1024, required: true, path: "resources.");
        var models = new List<string>();
        switch (r["accelerator"])
        {
            case null:
                break;
            case JsonValue v when v.TryGetValue<string>(out var m):
                models.Add(m);
                break;
            case JsonArray a:
                foreach (var x in a)
                {
                    if (x is JsonValue xv && xv.TryGetValue<string>(out var xm))
                    {
                        models.Add(xm);
                    }
                    else
                    {
                        errors.Add(new FieldError("resources.accelerator", "type", "must be a model name or a list of model names"));
                    }
                }

                break;
            default:
                errors.Add(new FieldError("resources.accelerator", "type", "must be a model name or a list of model names"));
                break;
        }

        foreach (var m in models)
        {
            if (!catalogue.Contains(m))
            {
                errors.Add(new FieldError("resources.accelerator", "known", $"unknown accelerator '{Clip(m)}'; known: {string.Join(", ", catalogue.Models.Select(x => x.Name))}"));
            }
        }

        var count = (int)Int(r, "accelerators", errors, 0, 64, defaultValue: models.Count > 0 ? 1 : 0, path: "resources.");
        var share = (int)Int(r, "gpuShare", errors, 1, 1000, defaultValue: 1000, path: "resources.");
        if (share < 1000 && count != 1)
        {
            errors.Add(new FieldError("resources.gpuShare", "range", "a card share below 1000 milli needs exactly one accelerator"));
        }

        return new JobResources(cpu, mem, models, count, share);
    }

    private static JobConstraints ParseConstraints(JsonNode? node, List<FieldError> errors)
    {
        if (node is null)
        {
            return JobConstraints.None;
        }

        if (node is not JsonObject c)
        {
            errors.Add(new FieldError("constraints", "type", "must be an object"));
            return JobConstraints.None;
        }

        Unknown(c, "constraints", ["regions", "providers", "userRegion", "maxLatencyMs", "dataRegion"], errors);
        List<string>? List(string field)
        {
            if (c[field] is null)
            {
                return null;
            }

            if (c[field] is JsonArray a && a.Count <= 64 && a.All(x => x is JsonValue v && v.TryGetValue<string>(out var s) && s.Length is > 0 and <= MaxNameLength))
            {
                return [.. a.Select(x => x!.GetValue<string>())];
            }

            errors.Add(new FieldError($"constraints.{field}", "type", $"must be a list of at most 64 names of 1 to {MaxNameLength} characters"));
            return null;
        }

        var latency = c["maxLatencyMs"] is null ? (int?)null : (int)Int(c, "maxLatencyMs", errors, 1, 100_000, path: "constraints.");
        return new JobConstraints(List("regions"), List("providers"), Str(c, "userRegion", errors, false, MaxNameLength, "constraints."), latency,
            Str(c, "dataRegion", errors, false, MaxNameLength, "constraints."));
    }

    private static void Unknown(JsonObject o, string path, string[] allowed, List<FieldError> errors)
    {
        foreach (var (k, _) in o)
        {
            if (!allowed.Contains(k))
            {
                errors.Add(new FieldError($"{path}.{Clip(k)}", "unknown", $"unknown field; allowed: {string.Join(", ", allowed)}"));
            }
        }
    }

    private static string? Str(JsonObject o, string field, List<FieldError> errors, bool required, int max, string path = "")
    {
        var node = o[field];
        if (node is null)
        {
            if (required)
            {
                errors.Add(new FieldError(path + field, "required", "is required"));
            }

            return null;
        }

        if (node is JsonValue v && v.TryGetValue<string>(out var s))
        {
            if (s.Length == 0 || s.Length > max)
            {
                errors.Add(new FieldError(path + field, "length", $"must be 1 to {max} characters"));
                return null;
            }

            return s;
        }

        errors.Add(new FieldError(path + field, "type", "must be a string"));
        return null;
    }

    private static long Int(JsonObject o, string field, List<FieldError> errors, long min, long max, long defaultValue = 0, bool required = false, string path = "")
    {
        var node = o[field];
        if (node is null)
        {
            if (required)
            {
                errors.Add(new FieldError(path + field, "required", "is required"));
            }

            return defaultValue;
        }

        if (node is JsonValue v && v.TryGetValue<decimal>(out var d) && d == decimal.Truncate(d) && d >= min && d <= max)
        {
            return (long)d;
        }

        errors.Add(new FieldError(path + field, "range", $"must be a whole number from {min} to {max}"));
        return defaultValue;
    }

    private static bool Bool(JsonObject o, string field, List<FieldError> errors, string path)
    {
        var node = o[field];
        if (node is null)
        {
            return false;
        }

        if (node is JsonValue v && v.TryGetValue<bool>(out var b))
        {
            return b;
        }

        errors.Add(new FieldError(path + field, "type", "must be true or false"));
        return false;
    }

    private static bool IsEnvName(string k) =>
        k.Length is > 0 and <= 128 && (char.IsAsciiLetter(k[0]) || k[0] == '_') && k.All(ch => char.IsAsciiLetterOrDigit(ch) || ch == '_');

    /// <summary>
    /// Names: letters and digits of any script (so Chinese names work), and '-', '_', '.', ' ' inside; no control,
    /// format (zero-width, bidi override), surrogate-less or combining-only tricks; normalised form C.
    /// </summary>
    public static void CheckName(string name, string field, List<FieldError> errors)
    {
        if (!name.IsNormalized(NormalizationForm.FormC))
        {
            errors.Add(new FieldError(field, "format", "must be in Unicode normalisation form C"));
            return;
        }

        if (name.Trim() != name)
        {
            errors.Add(new FieldError(field, "format", "must not start or end with white space"));
            return;
        }

        foreach (var rune in name.EnumerateRunes())
        {
            var cat = Rune.GetUnicodeCategory(rune);
            var ok = Rune.IsLetterOrDigit(rune) || rune.Value is '-' or '_' or '.' or ' '
                || cat is UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark;
            if (!ok)
            {
                errors.Add(new FieldError(field, "format", $"character U+{rune.Value:X4} is not allowed; use letters, digits, '-', '_', '.', and inner spaces"));
                return;
            }
        }
    }

    private static string Clip(string s) => s.Length <= 40 ? s : s[..40] + "…";
}
