using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Suanli.Core.Market;
using Suanli.Server.Storage;

namespace Suanli.Cli;

/// <summary>The trading centre's commands: market, wallet, vouchers, ledger, statements; and their benchmarks.</summary>
internal static partial class PlatformCommands
{
    private static void AddMarket(RootCommand root, Command bench)
    {
        root.Subcommands.Add(Market());
        root.Subcommands.Add(Wallet());
        root.Subcommands.Add(Vouchers());
        root.Subcommands.Add(Ledger());
        root.Subcommands.Add(StatementsCommand());
        bench.Subcommands.Add(BenchLedger());
        bench.Subcommands.Add(BenchMarket());
    }

    private static string Fen(JsonNode? n) => n is null ? "-" : Money.Yuan(n.GetValue<long>());

    private static string Str(JsonNode? n) => n?.ToString() ?? "-";

    private static Command Sub(string name, string description, Func<ParseResult, ApiClient, Task<int>> run, params Symbol[] symbols)
    {
        var c = WithClientOptions(new Command(name, description));
        foreach (var s in symbols)
        {
            if (s is Argument a)
            {
                c.Arguments.Add(a);
            }
            else if (s is Option o)
            {
                c.Options.Add(o);
            }
        }

        c.SetAction(r => Client(r, api => run(r, api)));
        return c;
    }

    private static void Set(JsonObject body, string field, object? value)
    {
        if (value is not null)
        {
            body[field] = JsonValue.Create(value);
        }
    }

    // ------------------------------------------------------------------ market
    private static string Consent(string c) => c switch
    {
        "proposed" => Messages.T("proposed", "待确认"),
        "accepted" => Messages.T("accepted", "已接受"),
        "declined" => Messages.T("declined", "已拒绝"),
        _ => c,
    };

    private static Command Market()
    {
        var market = new Command("market", "Trading centre: offers, spot order book, auction rounds / 算力交易：报价、现货盘口、竞价");
        var live = new Option<bool>("--live") { Description = "Only offers selling now / 仅当前有效" };
        var offers = Sub("offers", "List offers / 列出报价", async (r, api) =>
        {
            Print(r, await api.GetAsync($"/api/v1/offers{(r.GetValue(live) ? "?live=true" : "")}"), p => Table(
                [Messages.T("ID", "编号"), Messages.T("PROVIDER", "提供方"), Messages.T("GROUP", "节点组"), Messages.T("TIER", "档位"), Messages.T("PRICE", "价格"), Messages.T("UNIT", "单位"),
                    Messages.T("NODES", "节点"), Messages.T("VALID", "有效期"), Messages.T("LIVE", "有效")],
                p["items"]!.AsArray().Select(o => new[]
                {
                    Str(o!["id"]), Str(o["providerId"]), Str(o["group"]),
                    Str(o["tier"]) + (o["tenantId"] is { } t ? $"(tenant {t}{(o["consent"] is { } c ? ", " + Consent(c.ToString()) : "")})" : ""), Str(o["price"]), Str(o["unit"]),
                    Str(o["nodes"]), $"{o["validFrom"]}..{o["validTo"]}", o["live"]!.GetValue<bool>() ? Messages.T("yes", "是") : Messages.T("no", "否"),
                })));
            return ExitCodes.Ok;
        }, live);

        var provider = new Option<long?>("--provider") { Description = "Provider id (operator keys) / 提供方编号" };
        var group = new Option<string>("--group") { Description = "Node group id / 节点组", Required = true };
        var tier = new Option<string>("--tier") { Description = "on-demand | reserved | interruptible / 档位", DefaultValueFactory = _ => Tiers.OnDemand };
        var unit = new Option<string>("--unit") { Description = "card-hour | core-hour | fp16-tflops-hour | fp32-tflops-hour | fp64-tflops-hour / 计价单位", Required = true };
        var price = new Option<decimal>("--price") { Description = "CNY per unit / 每单位价格（元）", Required = true };
        var nodes = new Option<long>("--nodes") { Description = "Nodes sold in this tier / 节点数", Required = true };
        var from = new Option<string?>("--from") { Description = "Valid from (ISO 8601; default now) / 起始时间" };
        var to = new Option<string?>("--to") { Description = "Valid to (ISO 8601; default 30 days) / 截止时间" };
        var tenant = new Option<long?>("--tenant") { Description = "Reserved contract's tenant / 预留合约租户" };
        offers.Subcommands.Add(Sub("create", "Publish an offer / 发布报价", async (r, api) =>
        {
            var body = new JsonObject { ["group"] = r.GetValue(group), ["tier"] = r.GetValue(tier), ["unit"] = r.GetValue(unit), ["price"] = r.GetValue(price), ["nodes"] = r.GetValue(nodes) };
            Set(body, "providerId", r.GetValue(provider));
            Set(body, "validFrom", r.GetValue(from));
            Set(body, "validTo", r.GetValue(to));
            Set(body, "tenantId", r.GetValue(tenant));
            Print(r, await api.PostAsync("/api/v1/offers", body), o =>
            {
                Console.WriteLine(Messages.T($"offer {o["id"]} published: {o["tier"]} {o["price"]} CNY/{o["unit"]} × {o["nodes"]} nodes",
                    $"已发布报价 {o["id"]}：{o["tier"]} {o["price"]} 元/{o["unit"]} × {o["nodes"]} 节点"));
                if (o["contractFen"] is { } value)
                {
                    Console.WriteLine(Messages.T($"reserved contract proposed to tenant {o["tenantId"]}: {Fen(value)} CNY; it binds once the tenant accepts (suanli market offers accept {o["id"]}) before {o["validFrom"]}",
                        $"已向租户 {o["tenantId"]} 提议预留合约：{Fen(value)} 元；租户须在 {o["validFrom"]} 之前接受（suanli market offers accept {o["id"]}）后方生效"));
                }
            });
            return ExitCodes.Ok;
        }, provider, group, tier, unit, price, nodes, from, to, tenant));
        var offerId = new Argument<long>("OFFER");
        offers.Subcommands.Add(Sub("withdraw", "Withdraw an offer / 撤回报价", async (r, api) =>
        {
            Print(r, await api.DeleteAsync($"/api/v1/offers/{r.GetValue(offerId)}"), o => Console.WriteLine(Messages.T($"offer {o["id"]} withdrawn", $"已撤回报价 {o["id"]}")));
            return ExitCodes.Ok;
        }, offerId));
        var answer = new Argument<long>("OFFER");
        offers.Subcommands.Add(Sub("accept", "Accept a reserved contract proposed to you: its value is escrowed now / 接受预留合约（合约金额即时托管冻结）", async (r, api) =>
        {
            Print(r, await api.PostAsync($"/api/v1/offers/{r.GetValue(answer)}/accept", new JsonObject()), o => Console.WriteLine(Messages.T(
                $"contract {o["id"]} accepted: {Fen(o["contractFen"]!)} CNY held in escrow, paid to the provider at {o["validTo"]}",
                $"已接受合约 {o["id"]}：{Fen(o["contractFen"]!)} 元已托管冻结，于 {o["validTo"]} 结算给提供方")));
            return ExitCodes.Ok;
        }, answer));
        var declined = new Argument<long>("OFFER");
        offers.Subcommands.Add(Sub("decline", "Decline a reserved contract proposed to you / 拒绝预留合约", async (r, api) =>
        {
            Print(r, await api.PostAsync($"/api/v1/offers/{r.GetValue(declined)}/decline", new JsonObject()), o => Console.WriteLine(Messages.T(
                $"contract {o["id"]} declined; nothing was charged", $"已拒绝合约 {o["id"]}，未产生费用")));
            return ExitCodes.Ok;
        }, declined));
        market.Subcommands.Add(offers);

        market.Subcommands.Add(Sub("book", "Spot order book / 现货盘口", async (r, api) =>
        {
            Print(r, await api.GetAsync("/api/v1/market/book"), b =>
            {
                foreach (var i in b.AsArray())
                {
                    Console.WriteLine($"{i!["instrument"]}  {Messages.T("last", "最新成交")}: {Fen(i["lastBuyerPriceFen"])} / {Fen(i["lastSellerPriceFen"])}");
                    Table([Messages.T("SIDE", "方向"), Messages.T("PRICE", "价格"), Messages.T("LOTS", "手数"), Messages.T("ORDERS", "订单")],
                        i["bids"]!.AsArray().Select(l => new[] { Messages.T("bid", "买"), Fen(l!["priceFen"]), Str(l["lots"]), Str(l["orders"]) })
                            .Concat(i["asks"]!.AsArray().Select(l => new[] { Messages.T("ask", "卖"), Fen(l!["priceFen"]), Str(l["lots"]), Str(l["orders"]) })));
                }
            });
            return ExitCodes.Ok;
        }));
        var jobFile = new Argument<string>("FILE") { Description = "Job spec (YAML, JSON or an sbatch script) / 作业文件" };
        var quoteTenant = new Option<string?>("--tenant") { Description = "Tenant to quote for (operator keys) / 租户" };
        market.Subcommands.Add(Sub("quote", "What a job would cost where, cheapest first (nothing is submitted) / 询价", async (r, api) =>
        {
            var path = r.GetValue(jobFile)!;
            if (!File.Exists(path))
            {
                Console.Error.WriteLine(Messages.T($"{Messages.Error}: job file {path} does not exist", $"{Messages.Error}：作业文件 {path} 不存在"));
                return ExitCodes.MissingFile;
            }

            var text = await File.ReadAllTextAsync(path);
            var type = text.TrimStart().StartsWith('{') ? "application/json" : text.StartsWith("#!", StringComparison.Ordinal) || text.Contains("#SBATCH", StringComparison.Ordinal) ? "text/x-shellscript" : "application/yaml";
            var q = r.GetValue(quoteTenant) is { } tn ? $"?tenant={Uri.EscapeDataString(tn)}" : "";
            Print(r, await api.PostTextAsync("/api/v1/market/quote" + q, text, type), rows =>
            {
                if (rows.AsArray().Count == 0)
                {
                    Console.WriteLine(Messages.T("no node group may run this job now (see `suanli explain` once submitted)", "当前没有可运行该作业的节点组"));
                    return;
                }

                Table([Messages.T("PROVIDER", "提供方"), Messages.T("GROUP", "节点组"), Messages.T("OFFER", "报价"), Messages.T("TIER", "档位"), Messages.T("PRICE", "单价"),
                        Messages.T("UNITS/H", "每小时用量"), Messages.T("PER HOUR", "每小时"), Messages.T("HOLD", "冻结预估"), Messages.T("FREE NOW", "当前空闲")],
                    rows.AsArray().Select(x => new[]
                    {
                        Str(x!["provider"]), Str(x["group"]), Str(x["offerId"]), Str(x["tier"]), x["unit"] is null ? "-" : $"{Fen(x["priceFen"])}/{x["unit"]}",
                        $"{x["unitsMilli"]!.GetValue<long>() / 1000.0:0.###}", Fen(x["hourlyFen"]), Fen(x["estimatedFen"]),
                        x["fitsNow"]!.GetValue<bool>() ? Messages.T("yes", "是") : Messages.T("no", "否"),
                    }));
            });
            return ExitCodes.Ok;
        }, jobFile, quoteTenant));
        var instrument = new Option<string?>("--instrument") { Description = "e.g. card-hour:A100 / 品种" };
        var limit = new Option<int>("--limit") { Description = "Rounds / 轮数", DefaultValueFactory = _ => 20 };
        market.Subcommands.Add(Sub("rounds", "Clearing history / 成交历史", async (r, api) =>
        {
            Print(r, await api.GetAsync($"/api/v1/market/rounds?limit={r.GetValue(limit)}{(r.GetValue(instrument) is { } i ? "&instrument=" + Uri.EscapeDataString(i) : "")}"), RoundsTable);
            return ExitCodes.Ok;
        }, instrument, limit));
        market.Subcommands.Add(Sub("clear", "Run an auction round now (operator) / 立即撮合一轮", async (r, api) =>
        {
            Print(r, await api.PostAsync("/api/v1/market/clear", new JsonObject()), RoundsTable);
            return ExitCodes.Ok;
        }));
        market.Subcommands.Add(Sub("summary", "Market volume, prices and subsidy spend (operator) / 交易概览", async (r, api) =>
        {
            Print(r, await api.GetAsync("/api/v1/market/summary"), s =>
            {
                Table([Messages.T("TIER", "档位"), Messages.T("UNIT", "单位"), Messages.T("SETTLED", "结算笔数"), Messages.T("UNITS", "数量"), Messages.T("COST", "金额"), Messages.T("AVG PRICE", "均价")],
                    s["volume"]!.AsArray().Select(v => new[] { Str(v!["tier"]), Str(v["unit"]), Str(v["settlements"]), Num(v["units"]), Fen(v["costFen"]), Fen(v["averagePriceFen"]) }));
                Console.WriteLine(Messages.T($"charged {Fen(s["chargedFen"])}, fees {Fen(s["feesFen"])}, vouchers {Fen(s["subsidyFen"])}, auction rounds {s["rounds"]} ({s["spotLotsCleared"]} lots), open holds {s["openHolds"]} ({Fen(s["openHoldFen"])})",
                    $"成交 {Fen(s["chargedFen"])}，平台费 {Fen(s["feesFen"])}，算力券 {Fen(s["subsidyFen"])}，竞价 {s["rounds"]} 轮（{s["spotLotsCleared"]} 手），未结冻结 {s["openHolds"]} 笔（{Fen(s["openHoldFen"])}）"));
                foreach (var (k, v) in s["subsidyByProgramme"]!.AsObject())
                {
                    Console.WriteLine($"  {k}: {Fen(v)}");
                }
            });
            return ExitCodes.Ok;
        }));
        return market;
    }

    private static void RoundsTable(JsonNode rounds) => Table(
        [Messages.T("ROUND", "轮次"), Messages.T("INSTRUMENT", "品种"), Messages.T("AT", "时间"), Messages.T("BIDS", "买单"), Messages.T("ASKS", "卖单"), Messages.T("VOLUME", "成交手数"),
            Messages.T("BUYER PAYS", "买方价"), Messages.T("SELLER GETS", "卖方价"), Messages.T("REDUCED", "交易削减")],
        rounds.AsArray().Select(x => new[]
        {
            Str(x!["id"]), Str(x["instrument"]), DateTimeOffset.FromUnixTimeMilliseconds(x["atMs"]!.GetValue<long>()).ToString("u", CultureInfo.InvariantCulture),
            $"{x["bids"]} ({x["bidLots"]})", $"{x["asks"]} ({x["askLots"]})", $"{x["volume"]}/{x["efficientVolume"]}", Fen(x["buyerPriceFen"]), Fen(x["sellerPriceFen"]),
            x["reduced"]!.GetValue<bool>() ? Messages.T("yes", "是") : Messages.T("no", "否"),
        }));

    // ------------------------------------------------------------------ wallet
    private static Command Wallet()
    {
        var tenantArg = new Argument<long?>("TENANT") { Description = "Tenant id (a tenant key: its own) / 租户编号", Arity = ArgumentArity.ZeroOrOne };
        var wallet = Sub("wallet", "A tenant's wallet: balance, held, vouchers / 钱包余额", async (r, api) =>
        {
            var id = r.GetValue(tenantArg) ?? await OwnTenant(api);
            Print(r, await api.GetAsync($"/api/v1/wallets/{id}"), w =>
            {
                Console.WriteLine(Messages.T($"tenant {w["tenantId"]}: balance {Fen(w["balanceFen"])} CNY, held in escrow {Fen(w["heldFen"])}, available {Fen(w["availableFen"])}",
                    $"租户 {w["tenantId"]}：余额 {Fen(w["balanceFen"])} 元，托管冻结 {Fen(w["heldFen"])}，可用 {Fen(w["availableFen"])}"));
                foreach (var v in w["vouchers"]!.AsArray())
                {
                    Console.WriteLine(Messages.T($"  voucher {v!["id"]} (programme {v["programmeId"]}): {Fen(v["availableFen"])} of {Fen(v["amountFen"])} left, valid to {DateTimeOffset.FromUnixTimeMilliseconds(v["validToMs"]!.GetValue<long>()):u}",
                        $"  算力券 {v!["id"]}（项目 {v["programmeId"]}）：剩余 {Fen(v["availableFen"])} / {Fen(v["amountFen"])}，有效期至 {DateTimeOffset.FromUnixTimeMilliseconds(v["validToMs"]!.GetValue<long>()):u}"));
                }
            });
            return ExitCodes.Ok;
        }, tenantArg);

        var tenant = new Argument<long>("TENANT");
        var amount = new Argument<decimal>("AMOUNT") { Description = "CNY / 金额（元）" };
        var reference = new Option<string?>("--reference") { Description = "Bank or receipt reference / 凭证号" };
        var idem = new Option<string?>("--idempotency-key") { Description = "Make a retry safe / 幂等键" };
        var provider = new Argument<long>("PROVIDER");
        Command Move(string name, string description, Argument<long> who, string path, (string En, string Zh) balance) => Sub(name, description, async (r, api) =>
        {
            var body = new JsonObject { ["amount"] = r.GetValue(amount) };
            Set(body, "reference", r.GetValue(reference));
            Print(r, await api.PostAsync(string.Format(CultureInfo.InvariantCulture, path, r.GetValue(who)), body, r.GetValue(idem)), m => Console.WriteLine(
                Messages.T($"{m["transferId"]}: {m["result"]}, {balance.En} {Fen(m["balanceFen"])} CNY", $"{m["transferId"]}：{m["result"]}，{balance.Zh} {Fen(m["balanceFen"])} 元")));
            return ExitCodes.Ok;
        }, who, amount, reference, idem);
        wallet.Subcommands.Add(Move("topup", "Credit money received to a wallet (operator) / 充值", tenant, "/api/v1/wallets/{0}/topups", ("balance", "余额")));
        wallet.Subcommands.Add(Move("payout", "Record a payout to a provider (operator) / 向提供方付款", provider, "/api/v1/providers/{0}/payouts", ("receivable", "应收余额")));
        wallet.Subcommands.Add(Sub("transfers", "The wallet's journal / 钱包流水", async (r, api) =>
        {
            var id = r.GetValue(tenantArg) ?? await OwnTenant(api);
            Print(r, await api.GetAsync($"/api/v1/ledger/transfers?account=tenant:{id}&limit=1000"), TransfersTable);
            return ExitCodes.Ok;
        }, tenantArg));
        return wallet;
    }

    private static async Task<long> OwnTenant(ApiClient api)
    {
        var mine = (await api.GetAsync("/api/v1/tenants"))["items"]!.AsArray();
        return mine.Count == 1 ? mine[0]!["id"]!.GetValue<long>()
            : throw new ApiException(400, "tenant_required", Messages.T("name the tenant: an operator key sees every tenant", "请指定租户：管理员密钥可见所有租户"));
    }

    private static void TransfersTable(JsonNode page) => Table(
        [Messages.T("SEQ", "序号"), Messages.T("ID", "编号"), Messages.T("KIND", "类型"), Messages.T("DEBIT", "借方"), Messages.T("CREDIT", "贷方"), Messages.T("AMOUNT", "金额"), Messages.T("CODE", "用途"), Messages.T("JOB", "作业")],
        page["items"]!.AsArray().Select(t => new[] { Str(t!["seq"]), Str(t["id"]), Str(t["kind"]), Str(t["debit"]), Str(t["credit"]), Fen(t["amount"]), Str(t["code"]), Str(t["jobId"]) }));

    // ------------------------------------------------------------------ vouchers
    private static Command Vouchers()
    {
        var tenantOpt = new Option<long?>("--tenant") { Description = "Only this tenant's / 租户" };
        var vouchers = Sub("vouchers", "Compute vouchers (算力券) / 算力券", async (r, api) =>
        {
            Print(r, await api.GetAsync($"/api/v1/vouchers{(r.GetValue(tenantOpt) is { } t ? $"?tenant={t}" : "")}"), v => Table(
                [Messages.T("ID", "编号"), Messages.T("PROGRAMME", "项目"), Messages.T("TENANT", "租户"), Messages.T("AMOUNT", "面额"), Messages.T("LEFT", "剩余"), Messages.T("VALID TO", "有效期至"), Messages.T("EXPIRED", "已过期")],
                v.AsArray().Select(x => new[]
                {
                    Str(x!["id"]), Str(x["programmeId"]), Str(x["tenantId"]), Fen(x["amountFen"]), Fen(x["availableFen"]),
                    DateTimeOffset.FromUnixTimeMilliseconds(x["validToMs"]!.GetValue<long>()).ToString("u", CultureInfo.InvariantCulture), x["expiredMs"] is null ? "" : Messages.T("yes", "是"),
                })));
            return ExitCodes.Ok;
        }, tenantOpt);

        var programmes = Sub("programmes", "Voucher programmes (operator) / 算力券项目", async (r, api) =>
        {
            Print(r, await api.GetAsync("/api/v1/voucher-programmes"), v => Table(
                [Messages.T("ID", "编号"), Messages.T("NAME", "名称"), Messages.T("FUNDER", "出资方"), Messages.T("BUDGET", "预算"), Messages.T("REMAINING", "剩余"), Messages.T("ISSUED", "已发放"),
                    Messages.T("SUBSIDISED", "已补贴"), Messages.T("SHARE", "比例"), Messages.T("SECTORS", "行业")],
                v.AsArray().Select(x =>
                {
                    var p = x!["programme"]!;
                    return new[]
                    {
                        Str(p["id"]), Str(p["name"]), Str(p["funder"]), Fen(p["budgetFen"]), Fen(x["remainingFen"]), Fen(x["issuedFen"]), Fen(x["subsidisedFen"]),
                        $"{p["shareBps"]!.GetValue<int>() / 100.0:0.##}%" + (p["domesticShareBps"] is { } d ? $" ({Messages.T("domestic", "国产")} {d.GetValue<int>() / 100.0:0.##}%)" : ""),
                        p["sectors"]!.AsArray().Count == 0 ? Messages.T("all", "全部") : string.Join(",", p["sectors"]!.AsArray().Select(s => s!.ToString())),
                    };
                })));
            return ExitCodes.Ok;
        });
        var name = new Argument<string>("NAME");
        var funder = new Option<string>("--funder") { Description = "Who funds it (e.g. a city bureau) / 出资方", Required = true };
        var budget = new Option<decimal>("--budget") { Description = "Budget in CNY / 预算（元）", Required = true };
        var share = new Option<decimal>("--share") { Description = "Share of cost covered, 0..1 / 补贴比例", Required = true };
        var domestic = new Option<decimal?>("--domestic-share") { Description = "Higher share on domestic accelerators / 国产加速卡补贴比例" };
        var cap = new Option<decimal>("--tenant-cap") { Description = "Most one tenant may receive, CNY / 单租户上限", Required = true };
        var sectors = new Option<string?>("--sectors") { Description = "Eligible sectors, comma-separated (default all) / 适用行业" };
        var from = new Option<string?>("--from") { Description = "Valid from (ISO 8601) / 起始" };
        var to = new Option<string>("--to") { Description = "Valid to (ISO 8601) / 截止", Required = true };
        programmes.Subcommands.Add(Sub("create", "Create a programme (operator) / 创建项目", async (r, api) =>
        {
            var body = new JsonObject
            {
                ["name"] = r.GetValue(name), ["funder"] = r.GetValue(funder), ["budget"] = r.GetValue(budget), ["share"] = r.GetValue(share), ["tenantCap"] = r.GetValue(cap),
                ["validTo"] = r.GetValue(to),
                ["sectors"] = new JsonArray([.. (r.GetValue(sectors) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => (JsonNode)s)]),
            };
            Set(body, "domesticShare", r.GetValue(domestic));
            Set(body, "validFrom", r.GetValue(from));
            Print(r, await api.PostAsync("/api/v1/voucher-programmes", body), p => Console.WriteLine(Messages.T($"programme {p["id"]} created, budget {Fen(p["budgetFen"])} CNY", $"已创建项目 {p["id"]}，预算 {Fen(p["budgetFen"])} 元")));
            return ExitCodes.Ok;
        }, name, funder, budget, share, domestic, cap, sectors, from, to));
        vouchers.Subcommands.Add(programmes);

        var programme = new Argument<long>("PROGRAMME");
        var tenant = new Argument<long>("TENANT");
        var amount = new Argument<decimal>("AMOUNT") { Description = "CNY / 面额（元）" };
        var validTo = new Option<string?>("--valid-to") { Description = "Expiry (default: the programme's end) / 有效期" };
        vouchers.Subcommands.Add(Sub("issue", "Issue a voucher to a tenant (operator) / 发放算力券", async (r, api) =>
        {
            var body = new JsonObject { ["tenantId"] = r.GetValue(tenant), ["amount"] = r.GetValue(amount) };
            Set(body, "validTo", r.GetValue(validTo));
            Print(r, await api.PostAsync($"/api/v1/voucher-programmes/{r.GetValue(programme)}/vouchers", body), v => Console.WriteLine(
                Messages.T($"voucher {v["id"]} issued: {Fen(v["amountFen"])} CNY to tenant {v["tenantId"]}", $"已发放算力券 {v["id"]}：{Fen(v["amountFen"])} 元给租户 {v["tenantId"]}")));
            return ExitCodes.Ok;
        }, programme, tenant, amount, validTo));
        var csv = new Option<bool>("--csv") { Description = "CSV for a spreadsheet / 输出 CSV" };
        vouchers.Subcommands.Add(Sub("writeoff", "Write-off report (核销) of a programme / 核销报告", async (r, api) =>
        {
            var node = await api.GetAsync($"/api/v1/voucher-programmes/{r.GetValue(programme)}/writeoff{(r.GetValue(csv) ? "?format=csv" : "")}");
            if (r.GetValue(csv))
            {
                Console.Write(node.GetValue<string>());
                return ExitCodes.Ok;
            }

            Print(r, node, w => Table(
                [Messages.T("JOB", "作业"), Messages.T("ATTEMPT", "尝试"), Messages.T("TENANT", "租户"), Messages.T("PROVIDER", "提供方"), Messages.T("METERED", "计量"), Messages.T("CARD-H", "卡时"),
                    Messages.T("CORE-H", "核时"), Messages.T("COST", "金额"), Messages.T("SUBSIDY", "补贴"), Messages.T("TRANSFER", "凭证")],
                w.AsArray().Select(x => new[]
                {
                    Str(x!["jobId"]), Str(x["attempt"]), Str(x["tenantId"]), Str(x["providerId"]), $"{x["meteredMs"]!.GetValue<long>() / 1000.0:0.###} s", Num(x["cardHours"]), Num(x["coreHours"]),
                    Fen(x["costFen"]), Fen(x["subsidyFen"]), Str(x["transfer"]),
                })));
            return ExitCodes.Ok;
        }, programme, csv));
        var providerArg = new Argument<long>("PROVIDER");
        var note = new Option<string>("--note") { Description = "How they are related / 关联说明", Required = true };
        vouchers.Subcommands.Add(Sub("relate", "Declare a tenant and a provider related parties (no voucher between them) / 声明关联方", async (r, api) =>
        {
            Print(r, await api.PostAsync("/api/v1/relations", new JsonObject { ["tenantId"] = r.GetValue(tenant), ["providerId"] = r.GetValue(providerArg), ["note"] = r.GetValue(note) }),
                _ => Console.WriteLine(Messages.T("relation recorded", "已登记关联关系")));
            return ExitCodes.Ok;
        }, tenant, providerArg, note));
        return vouchers;
    }

    // ------------------------------------------------------------------ ledger and statements
    private static Command Ledger()
    {
        var ledger = new Command("ledger", "The double-entry ledger / 复式记账");
        ledger.Subcommands.Add(Sub("verify", "Check every ledger invariant (operator) / 核验账本", async (r, api) =>
        {
            var report = await api.GetAsync("/api/v1/ledger/verify");
            Print(r, report, x =>
            {
                Console.WriteLine(Messages.T(
                    $"{x["accounts"]} accounts, {x["transfers"]} transfers, sum of balances {Fen(x["sumPosted"])}, held {Fen(x["sumPendingDebits"])}; {x["settlementsChecked"]} settlements checked against metered usage ({Fen(x["settledFen"])}); {x["openHolds"]} open holds ({Fen(x["openHoldFen"])})",
                    $"{x["accounts"]} 个账户，{x["transfers"]} 笔转账，余额合计 {Fen(x["sumPosted"])}，冻结 {Fen(x["sumPendingDebits"])}；{x["settlementsChecked"]} 笔结算已与计量核对（{Fen(x["settledFen"])}）；未结冻结 {x["openHolds"]} 笔（{Fen(x["openHoldFen"])}）"));
                foreach (var p in x["problems"]!.AsArray())
                {
                    Console.WriteLine($"  ✗ {p}");
                }

                Console.WriteLine(x["ok"]!.GetValue<bool>() ? Messages.T("ledger OK", "账本核验通过") : Messages.T("LEDGER BROKEN", "账本核验失败"));
            });
            return report["ok"]!.GetValue<bool>() ? ExitCodes.Ok : ExitCodes.Internal;
        }));
        var prefix = new Option<string?>("--prefix") { Description = "e.g. tenant: or provider: / 账户前缀" };
        ledger.Subcommands.Add(Sub("accounts", "Accounts and balances (operator) / 账户余额", async (r, api) =>
        {
            Print(r, await api.GetAsync($"/api/v1/ledger/accounts{(r.GetValue(prefix) is { } p ? "?prefix=" + Uri.EscapeDataString(p) : "")}"), a => Table(
                [Messages.T("ACCOUNT", "账户"), Messages.T("KIND", "类型"), Messages.T("BALANCE", "余额"), Messages.T("HELD", "冻结"), Messages.T("AVAILABLE", "可用"), Messages.T("FLOOR", "下限")],
                a.AsArray().Select(x => new[] { Str(x!["id"]), Str(x["kind"]), Fen(x["posted"]), Fen(x["pendingDebits"]), Fen(x["available"]), x["floor"] is { } f ? Fen(f) : Messages.T("none", "无") })));
            return ExitCodes.Ok;
        }, prefix));
        var account = new Option<string?>("--account") { Description = "Only this account's transfers / 账户" };
        ledger.Subcommands.Add(Sub("transfers", "The journal (operator) / 流水", async (r, api) =>
        {
            Print(r, await api.GetAsync($"/api/v1/ledger/transfers?limit=1000{(r.GetValue(account) is { } a ? "&account=" + Uri.EscapeDataString(a) : "")}"), TransfersTable);
            return ExitCodes.Ok;
        }, account));
        return ledger;
    }

    private static Command StatementsCommand()
    {
        var statements = new Command("statements", "Monthly invoices and payout statements / 月度账单");
        var id = new Argument<long>("ID");
        var month = new Option<string>("--month") { Description = "Calendar month, e.g. 2026-11 (UTC) / 月份", DefaultValueFactory = _ => TimeProvider.System.GetUtcNow().ToString("yyyy-MM", CultureInfo.InvariantCulture) };
        var csv = new Option<bool>("--csv") { Description = "CSV lines / 输出 CSV" };
        foreach (var (kind, zh) in new[] { ("tenant", "租户账单"), ("provider", "提供方结算单") })
        {
            statements.Subcommands.Add(Sub(kind, $"{(kind == "tenant" ? "A tenant's invoice" : "A provider's payout statement")} / {zh}", async (r, api) =>
            {
                var node = await api.GetAsync($"/api/v1/statements/{kind}s/{r.GetValue(id)}?month={Uri.EscapeDataString(r.GetValue(month)!)}{(r.GetValue(csv) ? "&format=csv" : "")}");
                if (r.GetValue(csv))
                {
                    Console.Write(node.GetValue<string>());
                    return ExitCodes.Ok;
                }

                Print(r, node, s => Console.WriteLine(kind == "tenant"
                    ? Messages.T($"{s["tenant"]} {s["month"]}: opening {Fen(s["openingFen"])}, top-ups {Fen(s["topUpsFen"])}, charged {Fen(s["chargedFen"])} (vouchers {Fen(s["voucherFen"])}, paid {Fen(s["paidFen"])}), closing {Fen(s["closingFen"])}; {s["lines"]!.AsArray().Count} lines",
                        $"{s["tenant"]} {s["month"]}：期初 {Fen(s["openingFen"])}，充值 {Fen(s["topUpsFen"])}，消费 {Fen(s["chargedFen"])}（算力券 {Fen(s["voucherFen"])}，自付 {Fen(s["paidFen"])}），期末 {Fen(s["closingFen"])}；{s["lines"]!.AsArray().Count} 条")
                    : Messages.T($"{s["provider"]} {s["month"]}: opening {Fen(s["openingFen"])}, earned {Fen(s["earnedFen"])} after fees {Fen(s["feesFen"])}, paid out {Fen(s["paidOutFen"])}, closing {Fen(s["closingFen"])}; {s["lines"]!.AsArray().Count} lines",
                        $"{s["provider"]} {s["month"]}：期初 {Fen(s["openingFen"])}，收入 {Fen(s["earnedFen"])}（平台费 {Fen(s["feesFen"])}），已付 {Fen(s["paidOutFen"])}，期末 {Fen(s["closingFen"])}；{s["lines"]!.AsArray().Count} 条")));
                return ExitCodes.Ok;
            }, id, month, csv));
        }

        return statements;
    }

    // ------------------------------------------------------------------ benchmarks
    private static Command BenchLedger()
    {
        var transfers = new Option<int>("--transfers") { Description = "Transfers in all / 转账笔数", DefaultValueFactory = _ => 200_000 };
        var batch = new Option<int>("--batch") { Description = "Transfers per request / 每批笔数", DefaultValueFactory = _ => 250 };
        var concurrency = new Option<int>("--concurrency") { Description = "Concurrent writers / 并发数", DefaultValueFactory = _ => 8 };
        var accounts = new Option<int>("--accounts") { Description = "Wallets / 钱包数", DefaultValueFactory = _ => 10_000 };
        var cmd = new Command("ledger", "Durable ledger transfers per second on SQLite (synchronous=FULL, group commit) / 账本吞吐") { transfers, batch, concurrency, accounts, JsonOpt };
        cmd.SetAction(r => SimulateCommand.Guard(() =>
        {
            var n = r.GetValue(transfers);
            var b = r.GetValue(batch);
            var c = r.GetValue(concurrency);
            var a = r.GetValue(accounts);
            if (n is < 1 or > 50_000_000 || b is < 1 or > 8192 || c is < 1 or > 1024 || a is < 2 or > 10_000_000)
            {
                throw new ArgumentException("--transfers 1..50000000, --batch 1..8192, --concurrency 1..1024, --accounts 2..10000000");
            }

            return RunLedgerBench(n, b, c, a, r.GetValue(JsonOpt)).GetAwaiter().GetResult();
        }));
        return cmd;
    }

    private static async Task<int> RunLedgerBench(int n, int batch, int concurrency, int accounts, bool json)
    {
        var dir = Path.Combine(Path.GetTempPath(), "suanli-bench-ledger-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            await using var store = SqliteStore.Open(Path.Combine(dir, "ledger.db"));

            // Fund every wallet from outside, then move money between random wallets (each wallet starts with enough).
            var funding = Enumerable.Range(1, accounts).Select(i => new TransferRequest($"fund:{i}", TransferKinds.Posted, Accounts.Cash, Accounts.Tenant(i), 1_000_000_000, "topup")).ToList();
            foreach (var chunk in funding.Chunk(5000))
            {
                await store.TransferAsync(chunk, false, 0);
            }

            var batches = (n + batch - 1) / batch;
            var next = -1;
            var refused = 0L;
            var latencies = new double[batches];
            var sw = Stopwatch.StartNew();
            var (ops0, commits0) = store.WriteStats;
            await Task.WhenAll(Enumerable.Range(0, concurrency).Select(w => Task.Run(async () =>
            {
                var rng = new Random(w);
                int k;
                while ((k = Interlocked.Increment(ref next)) < batches)
                {
                    var size = Math.Min(batch, n - (k * batch));
                    var list = new TransferRequest[size];
                    for (var i = 0; i < size; i++)
                    {
                        var from = rng.Next(1, accounts + 1);
                        var to = from % accounts + 1;
                        list[i] = new TransferRequest($"b{k}:{i}", TransferKinds.Posted, Accounts.Tenant(from), Accounts.Tenant(to), rng.Next(1, 10_000), "bench");
                    }

                    var t0 = Stopwatch.GetTimestamp();
                    var outcomes = await store.TransferAsync(list, false, 1);
                    latencies[k] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                    Interlocked.Add(ref refused, outcomes.Count(o => !o.Ok));
                }
            })));
            sw.Stop();
            var (ops1, commits1) = store.WriteStats;
            var report = await store.VerifyAsync(0);
            Array.Sort(latencies);
            var rate = n / sw.Elapsed.TotalSeconds;
            var result = new JsonObject
            {
                ["transfers"] = n, ["batch"] = batch, ["concurrency"] = concurrency, ["accounts"] = accounts, ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 3),
                ["transfersPerSecond"] = Math.Round(rate), ["refused"] = refused, ["commits"] = commits1 - commits0, ["requestsPerCommit"] = Math.Round((ops1 - ops0) / (double)Math.Max(1, commits1 - commits0), 1),
                ["batchP50Ms"] = Math.Round(latencies[latencies.Length / 2], 2), ["batchP99Ms"] = Math.Round(latencies[Math.Min(latencies.Length - 1, (int)(latencies.Length * 0.99))], 2),
                ["verified"] = report.Ok, ["journal"] = report.Transfers,
            };
            if (json)
            {
                Console.WriteLine(result.ToJsonString(Pretty));
            }
            else
            {
                Console.WriteLine(Messages.T(
                    $"{n} durable transfers in {sw.Elapsed.TotalSeconds:F2} s = {rate:F0}/s (batch {batch}, {concurrency} writers, {commits1 - commits0} commits); batch p50 {result["batchP50Ms"]} ms p99 {result["batchP99Ms"]} ms; ledger verify: {(report.Ok ? "OK" : "BROKEN")}",
                    $"{n} 笔持久化转账，用时 {sw.Elapsed.TotalSeconds:F2} 秒 = 每秒 {rate:F0} 笔（每批 {batch}，{concurrency} 个写者，{commits1 - commits0} 次提交）；批延迟 p50 {result["batchP50Ms"]} 毫秒 p99 {result["batchP99Ms"]} 毫秒；账本核验：{(report.Ok ? "通过" : "失败")}"));
            }

            return report.Ok ? ExitCodes.Ok : ExitCodes.Internal;
        }
        finally
        {
            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
            Directory.Delete(dir, true);
        }
    }

    private static Command BenchMarket()
    {
        var orders = new Option<int>("--orders") { Description = "Orders (half bids, half asks) / 订单数", DefaultValueFactory = _ => 100_000 };
        var rounds = new Option<int>("--rounds") { Description = "Timed clearings / 轮数", DefaultValueFactory = _ => 20 };
        var cmd = new Command("market", "Time to clear the spot call market / 撮合耗时") { orders, rounds, JsonOpt };
        cmd.SetAction(r => SimulateCommand.Guard(() =>
        {
            var n = r.GetValue(orders);
            var k = r.GetValue(rounds);
            if (n is < 2 or > 50_000_000 || k is < 1 or > 1000)
            {
                throw new ArgumentException("--orders 2..50000000, --rounds 1..1000");
            }

            var rng = new Random(42);
            var bids = Enumerable.Range(0, n / 2).Select(i => new Order(i, rng.Next(1000), rng.Next(1, 9), rng.Next(500, 1500), i)).ToList();
            var asks = Enumerable.Range(0, n - (n / 2)).Select(i => new Order(n + i, rng.Next(100), rng.Next(1, 9), rng.Next(400, 1400), i)).ToList();
            var clearing = CallMarket.Clear(bids, asks); // warm-up (JIT)
            var times = new double[k];
            for (var i = 0; i < k; i++)
            {
                var t0 = Stopwatch.GetTimestamp();
                clearing = CallMarket.Clear(bids, asks);
                times[i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            }

            Array.Sort(times);
            var result = new JsonObject
            {
                ["orders"] = n, ["rounds"] = k, ["medianMs"] = Math.Round(times[k / 2], 2), ["minMs"] = Math.Round(times[0], 2), ["maxMs"] = Math.Round(times[^1], 2),
                ["volume"] = clearing.Volume, ["buyerPriceFen"] = clearing.BuyerPriceFen, ["sellerPriceFen"] = clearing.SellerPriceFen, ["reduced"] = clearing.Reduced,
            };
            if (r.GetValue(JsonOpt))
            {
                Console.WriteLine(result.ToJsonString(Pretty));
            }
            else
            {
                Console.WriteLine(Messages.T($"cleared {n} orders: median {result["medianMs"]} ms (min {result["minMs"]}, max {result["maxMs"]}) over {k} rounds; {clearing.Volume} lots at {Money.Yuan(clearing.BuyerPriceFen)}/{Money.Yuan(clearing.SellerPriceFen)}",
                    $"撮合 {n} 笔订单：中位 {result["medianMs"]} 毫秒（最小 {result["minMs"]}，最大 {result["maxMs"]}），共 {k} 轮；成交 {clearing.Volume} 手，价格 {Money.Yuan(clearing.BuyerPriceFen)}/{Money.Yuan(clearing.SellerPriceFen)}"));
            }

            return ExitCodes.Ok;
        }));
        return cmd;
    }
}
