using System.Globalization;
using System.Text.RegularExpressions;
using Suanli.Core.Domain;

namespace Suanli.Server;

/// <summary>What an sbatch script asked for, directive by directive, before it becomes a job document.</summary>
public sealed record SbatchRequest(
    string? Name,
    int? Nodes,
    int? Tasks,
    int? CpusPerTask,
    int? TasksPerNode,
    long? MemPerNodeMiB,
    long? MemPerCpuMiB,
    string? GpuType,
    int? GpusPerNode,
    int? GpusTotal,
    long? TimeSeconds,
    string? Partition,
    string? Output,
    string? Error,
    string? WorkDir,
    string? Export,
    bool Exclusive)
{
    /// <summary>The --dependency value (Slurm syntax), if any.</summary>
    public string? Dependency { get; init; }

    /// <summary>The --array task indices, if any.</summary>
    public IReadOnlyList<int>? Array { get; init; }

    /// <summary>The --array "%N" limit on tasks running at once, if any.</summary>
    public int? ArrayLimit { get; init; }
}

/// <summary>
/// Reads <c>#SBATCH</c> directives (long and short forms, <c>=</c> or space) from the comment block at the top of a
/// batch script — sbatch stops at the first non-comment, non-blank line, and so does this — and turns them into a
/// <see cref="JobDocument"/> whose script is the original, unchanged. Directives no provider can honour (job arrays,
/// dependencies, unknown options) are errors naming the directive and the rule; nothing is guessed.
/// </summary>
public static partial class Sbatch
{
    /// <summary>True when a body looks like a batch script (a shebang, or #SBATCH lines).</summary>
    public static bool Looks(string text) => text.StartsWith("#!", StringComparison.Ordinal) || text.Contains("#SBATCH", StringComparison.Ordinal);

    private static readonly Dictionary<char, string> Short = new()
    {
        ['J'] = "job-name", ['N'] = "nodes", ['n'] = "ntasks", ['c'] = "cpus-per-task", ['t'] = "time", ['p'] = "partition",
        ['o'] = "output", ['e'] = "error", ['D'] = "chdir", ['G'] = "gpus", ['a'] = "array", ['d'] = "dependency",
    };

    /// <summary>Parses the directives of a script.</summary>
    public static SbatchRequest ParseDirectives(string script, List<FieldError> errors)
    {
        var values = new Dictionary<string, string?>(StringComparer.Ordinal);
        var lineNo = 0;
        foreach (var raw in script.Split('\n'))
        {
            lineNo++;
            var line = raw.TrimEnd('\r').Trim();
            if (lineNo == 1 && line.StartsWith("#!", StringComparison.Ordinal))
            {
                continue;
            }

            if (line.Length == 0)
            {
                continue;
            }

            if (!line.StartsWith('#'))
            {
                break; // sbatch reads directives only before the first command.
            }

            if (!line.StartsWith("#SBATCH", StringComparison.Ordinal))
            {
                continue;
            }

            var rest = line["#SBATCH".Length..].Trim();
            var hash = rest.IndexOf(" #", StringComparison.Ordinal);
            if (hash >= 0)
            {
                rest = rest[..hash].Trim();
            }

            foreach (var (key, value) in Options(rest, lineNo, errors))
            {
                values[key] = value;
            }
        }

        string? V(string k) => values.TryGetValue(k, out var v) ? v : null;
        int? Int(string k, int min, int max)
        {
            if (V(k) is not { } s)
            {
                return null;
            }

            if (int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n >= min && n <= max)
            {
                return n;
            }

            errors.Add(new FieldError($"#SBATCH --{k}", "range", $"'{s}' is not a whole number from {min} to {max}"));
            return null;
        }

        var (array, arrayLimit) = V("array") is { } arrayText ? ArraySpec(arrayText, errors) : (null, null);

        if (V("dependency") is { } dep && dep.Contains('?', StringComparison.Ordinal))
        {
            errors.Add(new FieldError("#SBATCH --dependency", "unsupported", "'?' (any of) cannot be honoured; list dependencies that must all hold, separated by ','"));
        }

        if (values.ContainsKey("nodes") && V("nodes") is { } nodesText && nodesText.Contains('-', StringComparison.Ordinal))
        {
            errors.Add(new FieldError("#SBATCH --nodes", "unsupported", $"a node range ('{nodesText}') cannot be honoured; give one node count"));
            values.Remove("nodes");
        }

        var (gpuType, gpusPerNode) = Gres(V("gres"), errors);
        var gpusTotal = GpuCount(V("gpus"), errors, out var gpusType);
        return new SbatchRequest(
            V("job-name"),
            Int("nodes", 1, 100_000),
            Int("ntasks", 1, 1_000_000),
            Int("cpus-per-task", 1, 4096),
            Int("ntasks-per-node", 1, 4096),
            Memory(V("mem"), "mem", errors),
            Memory(V("mem-per-cpu"), "mem-per-cpu", errors),
            gpuType ?? gpusType,
            gpusPerNode,
            gpusTotal,
            V("time") is { } t ? Time(t, errors) : null,
            V("partition"),
            V("output"),
            V("error"),
            V("chdir"),
            V("export"),
            values.ContainsKey("exclusive"))
        {
            Dependency = V("dependency"),
            Array = array,
            ArrayLimit = arrayLimit,
        };
    }

    /// <summary>Slurm array indices (see <see cref="ArraySpec"/>).</summary>
    public static List<int>? ArrayIndices(string text, List<FieldError> errors) => ArraySpec(text, errors).Indices;

    /// <summary>
    /// Slurm array indices: "0-15", "1,3,5", "0-9:2" (step) and mixes, at most 10,000 tasks, each 0..4,000,000, with an
    /// optional "%N": at most N tasks leased or running at once.
    /// </summary>
    public static (List<int>? Indices, int? Limit) ArraySpec(string text, List<FieldError> errors)
    {
        int? limit = null;
        var pct = text.IndexOf('%', StringComparison.Ordinal);
        if (pct >= 0)
        {
            if (!int.TryParse(text[(pct + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n < 1)
            {
                errors.Add(new FieldError("#SBATCH --array", "format", $"'{text}': the limit after % must be a whole number of at least 1"));
                return (null, null);
            }

            limit = n;
            text = text[..pct];
        }

        return (Indices(text, errors), limit);
    }

    private static List<int>? Indices(string text, List<FieldError> errors)
    {
        var result = new SortedSet<int>();
        foreach (var part in text.Split(','))
        {
            var m = ArrayRegex().Match(part);
            if (!m.Success)
            {
                errors.Add(new FieldError("#SBATCH --array", "format", $"'{part}' is not N, N-M or N-M:STEP"));
                return null;
            }

            var from = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            var to = m.Groups[2].Success ? int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) : from;
            var step = m.Groups[3].Success ? int.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture) : 1;
            if (to < from || step < 1 || to > 4_000_000 || (to - from) / step >= 10_000)
            {
                errors.Add(new FieldError("#SBATCH --array", "range", $"'{part}': need N ≤ M ≤ 4000000, STEP ≥ 1 and at most 10000 tasks"));
                return null;
            }

            for (var i = from; i <= to; i += step)
            {
                result.Add(i);
            }
        }

        if (result.Count > 10_000)
        {
            errors.Add(new FieldError("#SBATCH --array", "range", "at most 10000 tasks"));
            return null;
        }

        return [.. result];
    }

    [GeneratedRegex("^([0-9]{1,7})(?:-([0-9]{1,7})(?::([0-9]{1,7}))?)?$")]
    private static partial Regex ArrayRegex();

    private static readonly HashSet<string> Known =
    [
        "job-name", "nodes", "ntasks", "cpus-per-task", "ntasks-per-node", "mem", "mem-per-cpu", "gres", "gpus", "time", "partition",
        "output", "error", "chdir", "export", "exclusive", "array", "dependency",
    ];

    private static IEnumerable<(string Key, string? Value)> Options(string text, int line, List<FieldError> errors)
    {
        var tokens = Tokens(text);
        for (var i = 0; i < tokens.Count; i++)
        {
            var tok = tokens[i];
            string key;
            string? value = null;
            if (tok.StartsWith("--", StringComparison.Ordinal))
            {
                var eq = tok.IndexOf('=', StringComparison.Ordinal);
                key = eq >= 0 ? tok[2..eq] : tok[2..];
                if (eq >= 0)
                {
                    value = tok[(eq + 1)..];
                }
            }
            else if (tok.Length >= 2 && tok[0] == '-' && Short.TryGetValue(tok[1], out var longName))
            {
                key = longName;
                if (tok.Length > 2)
                {
                    value = tok[2] == '=' ? tok[3..] : tok[2..];
                }
            }
            else
            {
                errors.Add(new FieldError($"#SBATCH (line {line})", "syntax", $"'{tok}' is not an sbatch option"));
                continue;
            }

            if (!Known.Contains(key))
            {
                errors.Add(new FieldError($"#SBATCH --{key}", "unsupported", $"line {line}: --{key} is not understood; no provider can honour it"));
                continue;
            }

            if (key != "exclusive" && value is null)
            {
                if (i + 1 >= tokens.Count)
                {
                    errors.Add(new FieldError($"#SBATCH --{key}", "required", $"line {line}: --{key} needs a value"));
                    continue;
                }

                value = tokens[++i];
            }

            yield return (key, value);
        }
    }

    private static List<string> Tokens(string text)
    {
        var list = new List<string>();
        foreach (Match m in TokenRegex().Matches(text))
        {
            list.Add(m.Value.Replace("\"", "", StringComparison.Ordinal).Replace("'", "", StringComparison.Ordinal));
        }

        return list;
    }

    [GeneratedRegex("""(?:"[^"]*"|'[^']*'|[^\s"'])+""")]
    private static partial Regex TokenRegex();

    /// <summary>Slurm memory: a number with an optional K/M/G/T suffix, megabytes by default.</summary>
    public static long? Memory(string? text, string key, List<FieldError> errors)
    {
        if (text is null)
        {
            return null;
        }

        var m = MemoryRegex().Match(text);
        if (!m.Success || !long.TryParse(m.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var n))
        {
            errors.Add(new FieldError($"#SBATCH --{key}", "format", $"'{text}' is not a size such as 4000, 4G or 512M"));
            return null;
        }

        long mib;
        try
        {
            mib = m.Groups[2].Value.ToUpperInvariant() switch
            {
                "K" => (n + 1023) / 1024,
                "G" => checked(n * 1024),
                "T" => checked(n * 1024 * 1024),
                _ => n,
            };
        }
        catch (OverflowException)
        {
            errors.Add(new FieldError($"#SBATCH --{key}", "range", $"'{text}' is larger than any node's memory"));
            return null;
        }

        if (mib > 64L * 1024 * 1024)
        {
            errors.Add(new FieldError($"#SBATCH --{key}", "range", $"'{text}' is more than 64 TiB"));
            return null;
        }

        if (mib <= 0)
        {
            // --mem=0 asks for all the node's memory: only meaningful with --exclusive on a known node.
            errors.Add(new FieldError($"#SBATCH --{key}", "range", "must be above 0 (--mem=0, all of a node's memory, is not supported)"));
            return null;
        }

        return mib;
    }

    [GeneratedRegex("^([0-9]+)([KkMmGgTt]?)[Bb]?$")]
    private static partial Regex MemoryRegex();

    /// <summary>
    /// Slurm time limits: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
    /// "days-hours:minutes" and "days-hours:minutes:seconds".
    /// </summary>
    public static long? Time(string text, List<FieldError> errors)
    {
        if (text is "UNLIMITED" or "unlimited" or "infinite" or "INFINITE")
        {
            errors.Add(new FieldError("#SBATCH --time", "range", "an unlimited time limit cannot be honoured; give a limit (at most 366 days)"));
            return null;
        }

        long days = 0;
        var rest = text;
        var dash = text.IndexOf('-', StringComparison.Ordinal);
        var parts = new List<long>();
        bool ok;
        if (dash >= 0)
        {
            ok = long.TryParse(text[..dash], NumberStyles.None, CultureInfo.InvariantCulture, out days);
            rest = text[(dash + 1)..];
        }
        else
        {
            ok = true;
        }

        foreach (var p in rest.Split(':'))
        {
            ok &= long.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out var v);
            parts.Add(v);
        }

        long seconds;
        if (!ok || parts.Count is 0 or > 3)
        {
            seconds = -1;
        }
        else if (dash >= 0)
        {
            // days-hours[:minutes[:seconds]]
            seconds = (days * 86400) + (parts[0] * 3600) + (parts.Count > 1 ? parts[1] * 60 : 0) + (parts.Count > 2 ? parts[2] : 0);
        }
        else
        {
            seconds = parts.Count switch
            {
                1 => parts[0] * 60,
                2 => (parts[0] * 60) + parts[1],
                _ => (parts[0] * 3600) + (parts[1] * 60) + parts[2],
            };
        }

        if (seconds <= 0 || seconds > JobDocument.MaxTimeLimitSeconds)
        {
            errors.Add(new FieldError("#SBATCH --time", "format", $"'{text}' is not a time limit such as 30, 30:00, 2:00:00, 1-12 or 1-12:30:00 (above 0, at most 366 days)"));
            return null;
        }

        return seconds;
    }

    private static (string? Type, int? PerNode) Gres(string? text, List<FieldError> errors)
    {
        if (text is null)
        {
            return (null, null);
        }

        // gpu[:type]:count, possibly with other GRES after a comma (those cannot be honoured).
        var items = text.Split(',');
        string? type = null;
        int? count = null;
        foreach (var item in items)
        {
            var p = item.Split(':');
            if (p[0] != "gpu")
            {
                errors.Add(new FieldError("#SBATCH --gres", "unsupported", $"GRES '{p[0]}' is not offered by any provider; only gpu"));
                continue;
            }

            if (p.Length is < 2 or > 3 || !int.TryParse(p[^1], NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n is < 1 or > 64)
            {
                errors.Add(new FieldError("#SBATCH --gres", "format", $"'{item}' is not gpu:N or gpu:TYPE:N with N from 1 to 64"));
                continue;
            }

            type = p.Length == 3 ? p[1] : null;
            count = n;
        }

        return (type, count);
    }

    private static int? GpuCount(string? text, List<FieldError> errors, out string? type)
    {
        type = null;
        if (text is null)
        {
            return null;
        }

        var p = text.Split(':');
        if (p.Length is < 1 or > 2 || !int.TryParse(p[^1], NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n is < 1 or > 100_000)
        {
            errors.Add(new FieldError("#SBATCH --gpus", "format", $"'{text}' is not N or TYPE:N"));
            return null;
        }

        type = p.Length == 2 ? p[0] : null;
        return n;
    }

    /// <summary>
    /// Builds the job: tasks = --ntasks (else nodes × ntasks-per-node, else nodes, else 1); per task: --cpus-per-task
    /// cores, memory from --mem-per-cpu × cores or --mem ÷ tasks per node (default 1 GiB per core), cards from
    /// --gres per node ÷ tasks per node or --gpus ÷ tasks. The script itself is kept unchanged.
    /// </summary>
    public static JobDocument ToJob(string script, AcceleratorCatalogue catalogue, string? nameFallback = null)
    {
        var errors = new List<FieldError>();
        var r = ParseDirectives(script, errors);
        var nodes = r.Nodes ?? 1;
        var tasks = r.Tasks ?? (r.TasksPerNode is { } tpn ? tpn * nodes : nodes);
        var perNode = r.TasksPerNode ?? Math.Max(1, (int)Math.Ceiling(tasks / (double)nodes));
        var cores = r.CpusPerTask ?? 1;
        long memory = r.MemPerCpuMiB is { } mpc ? mpc * cores : r.MemPerNodeMiB is { } mpn ? Math.Max(1, mpn / perNode) : 1024L * cores;
        var gpus = 0;
        if (r.GpusPerNode is { } g)
        {
            if (g % perNode != 0)
            {
                errors.Add(new FieldError("#SBATCH --gres", "divisible", $"{g} GPUs per node do not split evenly over {perNode} tasks per node"));
            }

            gpus = g / perNode;
        }
        else if (r.GpusTotal is { } total)
        {
            if (total % tasks != 0)
            {
                errors.Add(new FieldError("#SBATCH --gpus", "divisible", $"{total} GPUs do not split evenly over {tasks} tasks"));
            }

            gpus = total / tasks;
        }

        var models = new List<string>();
        if (r.GpuType is { } type)
        {
            var model = catalogue.Models.FirstOrDefault(m => string.Equals(m.Name, type, StringComparison.OrdinalIgnoreCase));
            if (model is null)
            {
                errors.Add(new FieldError("#SBATCH --gres", "known", $"GPU type '{type}' is not a known model; known: {string.Join(", ", catalogue.Models.Select(m => m.Name))}"));
            }
            else
            {
                models.Add(model.Name);
            }
        }

        if (r.TimeSeconds is null && !errors.Any(e => e.Field == "#SBATCH --time"))
        {
            errors.Add(new FieldError("#SBATCH --time", "required", "Suanli needs a time limit (-t) to schedule and to price the job"));
        }

        var name = r.Name ?? nameFallback ?? "sbatch";
        JobDocument.CheckName(name, "#SBATCH --job-name", errors);
        if (name.Length > JobDocument.MaxNameLength)
        {
            errors.Add(new FieldError("#SBATCH --job-name", "length", $"at most {JobDocument.MaxNameLength} characters"));
        }

        var env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["SLURM_JOB_NAME"] = name,
            ["SLURM_NTASKS"] = tasks.ToString(CultureInfo.InvariantCulture),
            ["SLURM_NPROCS"] = tasks.ToString(CultureInfo.InvariantCulture),
            ["SLURM_CPUS_PER_TASK"] = cores.ToString(CultureInfo.InvariantCulture),
            ["SLURM_JOB_NUM_NODES"] = nodes.ToString(CultureInfo.InvariantCulture),
            ["SLURM_NNODES"] = nodes.ToString(CultureInfo.InvariantCulture),
            ["SLURM_NTASKS_PER_NODE"] = perNode.ToString(CultureInfo.InvariantCulture),
            ["SLURM_MEM_PER_NODE"] = (memory * perNode).ToString(CultureInfo.InvariantCulture),
        };
        if (gpus > 0)
        {
            env["SLURM_GPUS"] = (gpus * tasks).ToString(CultureInfo.InvariantCulture);
        }

        if (r.Partition is { } part)
        {
            env["SLURM_JOB_PARTITION"] = part;
        }

        if (r.Export is { } export)
        {
            foreach (var item in export.Split(','))
            {
                var eq = item.IndexOf('=', StringComparison.Ordinal);
                if (item.Any(char.IsControl))
                {
                    errors.Add(new FieldError("#SBATCH --export", "format", "names and values must not contain control characters (NUL, newline, …)"));
                }
                else if (eq > 0)
                {
                    env[item[..eq]] = item[(eq + 1)..];
                }
                else if (item is not ("ALL" or "NONE" or "NIL") && item.Length > 0)
                {
                    errors.Add(new FieldError("#SBATCH --export", "unsupported", $"'{item}': exporting a variable from the submitting shell is not possible; give NAME=value"));
                }
            }
        }

        var dependencies = r.Dependency is { } dl ? JobDocument.ParseDependencies(dl.Split(','), "#SBATCH --dependency", errors) : [];
        if (errors.Count > 0)
        {
            throw new ValidationException(errors);
        }

        return new JobDocument(name, null, script, env, new JobResources(cores, memory, models, gpus, 1000), tasks, r.TimeSeconds!.Value, 1,
            new RetryPolicy(1, false), JobConstraints.None, null, null) { Format = "sbatch", Dependencies = dependencies, ArrayTasks = r.Array ?? [], ArrayLimit = r.ArrayLimit };
    }
}
