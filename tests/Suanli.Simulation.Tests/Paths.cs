namespace Suanli.Simulation.Tests;

internal static class Paths
{
    /// <summary>../shared/traces, found by walking up from the test binary to the repository's parent.</summary>
    public static string Traces { get; } = Find();

    public static string Sdsc => Path.Combine(Traces, "sdsc-sp2-1998", "SDSC-SP2-1998-4.2-cln.swf.gz");

    public static string Lublin => Path.Combine(Traces, "lublin-256-synthetic", "lublin_256.swf.gz");

    public static string PaiDefault => Path.Combine(Traces, "alibaba-pai-gpu-2023", "openb_pod_list_default.csv.gz");

    private static string Find()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "traces");
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new DirectoryNotFoundException("../shared/traces not found above " + AppContext.BaseDirectory);
    }
}
