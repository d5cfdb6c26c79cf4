namespace Suanli.Cli;

/// <summary>
/// User-facing CLI text in English and Simplified Chinese. Chinese is chosen when SUANLI_LANG, LC_ALL, LC_MESSAGES or
/// LANG starts with "zh" (in that order of precedence).
/// </summary>
internal static class Messages
{
    public static bool Chinese { get; } = DetectChinese();

    private static bool DetectChinese()
    {
        foreach (var name in new[] { "SUANLI_LANG", "LC_ALL", "LC_MESSAGES", "LANG" })
        {
            if (Environment.GetEnvironmentVariable(name) is { Length: > 0 } v)
            {
                return v.StartsWith("zh", StringComparison.OrdinalIgnoreCase);
            }
        }

        return false;
    }

    public static string T(string en, string zh) => Chinese ? zh : en;

    public static string Error => T("error", "错误");

    public static string Jobs => T("jobs", "作业数");

    public static string Skipped => T("skipped", "跳过");

    public static string AvgBsld => T("average bounded slowdown", "平均有界减速比");

    public static string AvgWait => T("average wait (s)", "平均等待 (秒)");

    public static string WaitPct => T("wait p50/p95/p99 (s)", "等待 p50/p95/p99 (秒)");

    public static string AvgJct => T("average JCT (s)", "平均完成时间 (秒)");

    public static string Utilization => T("utilization", "利用率");

    public static string Makespan => T("makespan (s)", "总时长 (秒)");

    public static string Wall => T("wall time (s)", "运行耗时 (秒)");

    public static string Cost => T("cost", "费用");
}
