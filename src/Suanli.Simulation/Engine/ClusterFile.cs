using Suanli.Core.Domain;
using YamlDotNet.Core;
using YamlDotNet.Serialization;
using YamlDotNet.Serialization.NamingConventions;

namespace Suanli.Simulation.Engine;

/// <summary>An invalid cluster file: the message names the field (as a path) and the rule it breaks.</summary>
public sealed class ClusterFileException(string message) : Exception(message);

/// <summary>
/// Reads a cluster description (YAML, or JSON which is valid YAML) into a <see cref="Pool"/>:
/// <code>
/// providers:
///   - id: zz-hpc
///     region: henan
///     site: zhengzhou
///     nodeGroups:
///       - id: a100
///         nodes: 16
///         cpu: 64              # cores per node (or milliCpu)
///         memoryMiB: 524288
///         accelerator: A100    # catalogue model
///         acceleratorCount: 8
///         gpuSharing: false
///         pricePerNodeHour: 120.00
/// latency:
///   - { from: henan, to: guizhou, ms: 28 }
/// </code>
/// </summary>
public static class ClusterFile
{
    /// <summary>Loads and validates a cluster file.</summary>
    public static Pool Load(string path, AcceleratorCatalogue? catalogue = null)
    {
        if (!File.Exists(path))
        {
            throw new ClusterFileException($"cluster: file '{path}' does not exist");
        }

        return Parse(File.ReadAllText(path), catalogue);
    }

    /// <summary>Parses and validates cluster text.</summary>
    public static Pool Parse(string text, AcceleratorCatalogue? catalogue = null)
    {
        catalogue ??= AcceleratorCatalogue.BuiltIn;
        ClusterDto dto;
        try
        {
            dto = new DeserializerBuilder().WithNamingConvention(CamelCaseNamingConvention.Instance).Build().Deserialize<ClusterDto>(text)
                ?? throw new ClusterFileException("cluster: the file is empty; it needs a 'providers' list");
        }
        catch (YamlException e)
        {
            throw new ClusterFileException($"cluster: not valid YAML/JSON at line {e.Start.Line}, column {e.Start.Column}: {(e.InnerException ?? e).Message}");
        }

        if (dto.Providers is not { Count: > 0 })
        {
            throw new ClusterFileException("providers: must list at least one provider");
        }

        var providers = new List<Provider>();
        var groups = new List<NodeGroup>();
        for (var p = 0; p < dto.Providers.Count; p++)
        {
            var pd = dto.Providers[p];
            var at = $"providers[{p}]";
            var id = Name(pd.Id, at + ".id");
            providers.Add(new Provider(id, Name(pd.Region, at + ".region"), pd.Site ?? id));
            if (pd.NodeGroups is not { Count: > 0 })
            {
                throw new ClusterFileException($"{at}.nodeGroups: must list at least one node group");
            }

            for (var g = 0; g < pd.NodeGroups.Count; g++)
            {
                var gd = pd.NodeGroups[g];
                var gat = $"{at}.nodeGroups[{g}]";
                if (gd.Nodes is not > 0 || gd.Nodes > 1_000_000)
                {
                    throw new ClusterFileException($"{gat}.nodes: must be an integer from 1 to 1000000");
                }

                long milli = gd.MilliCpu ?? (gd.Cpu is { } c ? (long)Math.Round(c * 1000) : 0);
                if (milli <= 0 || milli > 100_000_000)
                {
                    throw new ClusterFileException($"{gat}.cpu: must be a positive number of cores per node (or milliCpu), at most 100000 cores");
                }

                if (gd.MemoryMiB is < 0)
                {
                    throw new ClusterFileException($"{gat}.memoryMiB: must not be negative");
                }

                var count = gd.AcceleratorCount ?? 0;
                if (count is < 0 or > 64)
                {
                    throw new ClusterFileException($"{gat}.acceleratorCount: must be from 0 to 64");
                }

                if (count > 0 && gd.Accelerator is null)
                {
                    throw new ClusterFileException($"{gat}.accelerator: required when acceleratorCount > 0");
                }

                if (gd.Accelerator is { } model && !catalogue.Contains(model))
                {
                    throw new ClusterFileException($"{gat}.accelerator: unknown model '{model}'; known: {string.Join(", ", catalogue.Models.Select(m => m.Name))}");
                }

                if (gd.PricePerNodeHour is < 0)
                {
                    throw new ClusterFileException($"{gat}.pricePerNodeHour: must not be negative");
                }

                var shape = new NodeShape(milli, gd.MemoryMiB ?? 0, count > 0 ? catalogue.Find(gd.Accelerator!)!.Name : null, count, gd.GpuSharing ?? false);
                groups.Add(new NodeGroup(Name(gd.Id, gat + ".id"), id, shape, gd.Nodes.Value, gd.PricePerNodeHour));
            }
        }

        var latency = new List<(string, string, int)>();
        for (var i = 0; i < (dto.Latency?.Count ?? 0); i++)
        {
            var l = dto.Latency![i];
            if (l.Ms is not >= 0)
            {
                throw new ClusterFileException($"latency[{i}].ms: must be a non-negative integer");
            }

            latency.Add((Name(l.From, $"latency[{i}].from"), Name(l.To, $"latency[{i}].to"), l.Ms.Value));
        }

        try
        {
            return new Pool(providers, groups, latency);
        }
        catch (ArgumentException e)
        {
            throw new ClusterFileException(e.Message.Split(" (Parameter", 2)[0]);
        }
    }

    private static string Name(string? value, string field)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            throw new ClusterFileException($"{field}: required");
        }

        if (value.Length > 64 || !value.All(ch => char.IsAsciiLetterOrDigit(ch) || ch is '-' or '_' or '.'))
        {
            throw new ClusterFileException($"{field}: '{value}' must be 1-64 characters of letters, digits, '-', '_' or '.'");
        }

        return value;
    }

    private sealed class ClusterDto
    {
        public List<ProviderDto>? Providers { get; set; }

        public List<LatencyDto>? Latency { get; set; }
    }

    private sealed class ProviderDto
    {
        public string? Id { get; set; }

        public string? Region { get; set; }

        public string? Site { get; set; }

        public List<GroupDto>? NodeGroups { get; set; }
    }

    private sealed class GroupDto
    {
        public string? Id { get; set; }

        public int? Nodes { get; set; }

        public double? Cpu { get; set; }

        public long? MilliCpu { get; set; }

        public long? MemoryMiB { get; set; }

        public string? Accelerator { get; set; }

        public int? AcceleratorCount { get; set; }

        public bool? GpuSharing { get; set; }

        public decimal? PricePerNodeHour { get; set; }
    }

    private sealed class LatencyDto
    {
        public string? From { get; set; }

        public string? To { get; set; }

        public int? Ms { get; set; }
    }
}
