import XCTest
@testable import PeruserCore

final class StatusPageTests: XCTestCase {
    private func snapshot() -> StatusSnapshot {
        let envs = [StatusSnapshot.Environment(name: "small", user: "u<1>", group: "g&1", maxProcessors: 3,
                                               connections: 7, requests: 9, dropped: 1, availability: 90, waiting: 2,
                                               shed: 3),
                    StatusSnapshot.Environment(name: "big", user: "u2", group: "g2", maxProcessors: 10,
                                               connections: 100, requests: 120, dropped: 0)]
        let slots = [
            StatusSnapshot.Slot(id: 0, pid: 0, status: .standby, scoreboardState: 0, type: .unknown, environment: nil),
            StatusSnapshot.Slot(id: 1, pid: 11, status: .active, scoreboardState: 4, type: .processor, environment: 1,
                                http2: true),
            StatusSnapshot.Slot(id: 2, pid: 12, status: .ready, scoreboardState: 2, type: .multiplexer, environment: nil),
            StatusSnapshot.Slot(id: 3, pid: 13, status: .active, scoreboardState: 3, type: .worker, environment: 1,
                                awaitingClient: true),
            StatusSnapshot.Slot(id: 4, pid: 0, status: .standby, scoreboardState: 0, type: .unknown, environment: nil),
        ]
        return StatusSnapshot(slots: slots, environments: envs, maxMultiplexers: 4)
    }

    private func rows(_ html: String) -> [String] {
        html.components(separatedBy: "\n").filter { $0.hasPrefix("<tr><td>") }
    }

    func testChildTableRowsFollowTheOriginalColumns() {
        let table = StatusPage.childTable(snapshot())
        XCTAssertTrue(table.contains("<th>ID</th><th>PID</th><th>STATUS</th><th>SB STATUS</th><th>Type</th>"
                                     + "<th>Processor</th><th>Pss</th><th>AVAIL</th>"))
        let r = rows(table)
        XCTAssertEqual(r.count, 5)
        XCTAssertEqual(r[0], "<tr><td>1</td><td>11</td><td>ACTIVE</td><td>BUSY_WRITE</td><td>PROCESSOR</td>"
                       + "<td>big</td><td>2/0/10</td><td>100%</td><td>-</td><td>-</td><td>-</td></tr>")
        XCTAssertEqual(r[1], "<tr><td>2</td><td>12</td><td>READY</td><td>READY</td><td>MULTIPLEXER</td>"
                       + "<td>Multiplexer</td><td>1/1/4</td><td>100%</td><td></td><td></td><td></td></tr>")
        // An environment with no worker is on one row with the others in its state, and the free
        // general slots on one row.
        XCTAssertEqual(r[3], "<tr><td>-</td><td>0</td><td>STANDBY</td><td>DEAD</td><td>PROCESSOR</td>"
                       + "<td>1 environment with no worker: small</td><td>0/0/-</td><td>90%</td>"
                       + "<td></td><td></td><td></td></tr>")
        XCTAssertEqual(r[4], "<tr><td>-</td><td>0</td><td>STANDBY</td><td>DEAD</td><td>UNKNOWN</td>"
                       + "<td>1 free slot</td><td>0/0/0</td><td>0%</td><td></td><td></td><td></td></tr>")
    }

    /// The details of a worker (client, vhost, request) show to a viewer of its own environment
    /// or one with the full view, escaped; to any other viewer as `-`, even where the snapshot
    /// holds text (hiddenness comes from the configuration, not from zeros in the table).
    func testWorkerDetailsShowOnlyToItsEnvironmentOrTheFullView() {
        var s = snapshot()
        s.slots[1].client = "127.0.0.3"
        s.slots[1].vhost = "b<i>.test"
        s.slots[1].request = "GET /x?a=<script>alert('&')</script> HTTP/1.1"
        s.slots[3].client = "::1"
        let visible = "<td>127.0.0.3</td><td>b&lt;i&gt;.test</td>"
            + "<td>GET /x?a=&lt;script&gt;alert(&#39;&amp;&#39;)&lt;/script&gt; HTTP/1.1</td></tr>"
        for (viewer, fullView, shown) in [(1, false, true), (0, false, false), (0, true, true), (nil, false, false),
                                          (nil, true, true)] as [(Int?, Bool, Bool)] {
            s.viewer = viewer
            s.fullView = fullView
            let html = StatusPage.childTable(s)
            let r = rows(html)
            XCTAssertFalse(html.contains("<script>") || html.contains("<i>"), "\(viewer as Any) \(fullView)")
            XCTAssertEqual(r[0].hasSuffix(visible), shown, r[0])
            XCTAssertEqual(r[2].hasSuffix("<td>::1</td><td></td><td></td></tr>"), shown, r[2])
            if !shown {
                XCTAssertTrue(r[0].hasSuffix("<td>100%</td><td>-</td><td>-</td><td>-</td></tr>"), r[0])
                XCTAssertFalse(html.contains("127.0.0.3") || html.contains(".test") || html.contains("GET"))
            }
            // The multiplexer's row never has details.
            XCTAssertTrue(r[1].hasSuffix("<td></td><td></td><td></td></tr>"), r[1])
            // ?auto and ?peruser_stats show no details at all.
            XCTAssertFalse(StatusPage.auto(s).contains("127.0.0.3"))
            XCTAssertFalse(StatusPage.statistics(s).contains("127.0.0.3"))
        }
    }

    func testAFreeReservedSlotOfAnEnvironmentWithWorkersShowsItsProcessor() {
        var s = snapshot()
        // Slot 1 (big's reserved slot) is free while big has a worker in slot 3.
        s.slots[1] = StatusSnapshot.Slot(id: 1, pid: 0, status: .standby, scoreboardState: 0, type: .unknown, environment: nil)
        XCTAssertTrue(rows(StatusPage.childTable(s)).contains("<tr><td>1</td><td>0</td><td>STANDBY</td><td>DEAD</td>"
                                                              + "<td>PROCESSOR</td><td>big</td><td>1/0/10</td><td>100%</td>"
                                                              + "<td></td><td></td><td></td></tr>"))
    }

    /// The parent writes a child's pid only once the fork has returned it; a child that already
    /// reported itself ready or active in that moment (the very worker rendering this page, say)
    /// is alive, while a slot still starting is not.
    func testAChildThatReportedBeforeItsPidWasWrittenIsAlive() {
        var s = snapshot()
        s.slots[0] = StatusSnapshot.Slot(id: 0, pid: 0, status: .active, scoreboardState: 3, type: .worker, environment: 0)
        XCTAssertEqual(s.count(environment: 0).alive, 1)
        XCTAssertFalse(StatusPage.childTable(s).contains("with no worker: small"))
        XCTAssertTrue(StatusPage.auto(s).contains("PeruserEnvironment: small alive=1 "))
        XCTAssertTrue(rows(StatusPage.childTable(s))[0].hasPrefix("<tr><td>0</td><td>0</td><td>ACTIVE</td>"))
        for status in [ChildStatus.starting, .standby] {
            s.slots[0].status = status
            XCTAssertEqual(s.count(environment: 0).alive, 0, status.name)
            XCTAssertTrue(StatusPage.childTable(s).contains("1 environment with no worker: small"), status.name)
        }
        // A child on its way out (standby, pid known) is shown but not counted, as before.
        s.slots[3].status = .standby
        XCTAssertEqual(s.count(environment: 1).alive, 1)
        XCTAssertTrue(rows(StatusPage.childTable(s)).contains { $0.hasPrefix("<tr><td>3</td><td>13</td><td>STANDBY</td>") })
    }

    func testThreeHundredQuietEnvironmentsTakeOneRowPerState() {
        let envs = (0..<300).map { StatusSnapshot.Environment(name: "t\($0)", user: "u", group: "g", maxProcessors: 10,
                                                             availability: $0 == 7 ? 50 : 100) }
        let slots = (0..<768).map { StatusSnapshot.Slot(id: $0, pid: 0, status: .standby, scoreboardState: 0, type: .unknown,
                                                         environment: nil) }
            + [StatusSnapshot.Slot(id: 768, pid: 5, status: .ready, scoreboardState: 2, type: .worker, environment: 3)]
        let s = StatusSnapshot(slots: slots, environments: envs, maxMultiplexers: 3)
        let r = rows(StatusPage.childTable(s))
        // t3's free reserved slot, its worker, the quiet ones by availability, the free slots.
        XCTAssertEqual(r.count, 5)
        XCTAssertTrue(r[0].hasPrefix("<tr><td>3</td><td>0</td><td>STANDBY</td><td>DEAD</td><td>PROCESSOR</td><td>t3</td>"), r[0])
        XCTAssertTrue(r[2].contains("<td>298 environments with no worker: t0, t1, t10, t100,"), r[2])
        XCTAssertTrue(r[2].hasSuffix("<td>100%</td><td></td><td></td><td></td></tr>"))
        XCTAssertTrue(r[3].contains("<td>1 environment with no worker: t7</td>")
                      && r[3].hasSuffix("<td>50%</td><td></td><td></td><td></td></tr>"))
        XCTAssertTrue(r[4].contains("<td>468 free slots</td>"))
        XCTAssertEqual(rows(StatusPage.statistics(s)).count, 3)
        XCTAssertEqual(StatusPage.auto(s).split(separator: "\n").count, 301)
    }

    func testStatisticsAreOrderedByMostAliveAndTotalled() {
        let stats = StatusPage.statistics(snapshot())
        let r = rows(stats)
        XCTAssertEqual(r.count, 2)
        XCTAssertTrue(r[0].hasPrefix("<tr><td>big</td>"))
        XCTAssertEqual(r[1], "<tr><td>1 environment with no worker: small</td><td></td><td></td><td>0/0/3</td><td>7</td>"
                       + "<td>9</td><td>1</td><td>90%</td><td>0</td><td>3</td><td>0</td></tr>")
        // Reading 1, shed 0, one worker holding an HTTP/2 connection.
        XCTAssertTrue(r[0].hasSuffix("<td>100%</td><td>1</td><td>0</td><td>1</td></tr>"), r[0])
        XCTAssertTrue(stats.contains("<tr><th>Total</th><th></th><th></th><th>2/0/13</th><th>107</th>"
                                     + "<th>129</th><th>1</th><th></th><th>1</th><th>3</th><th>1</th></tr>"), stats)
    }

    func testTiesAreOrderedByName() {
        var s = snapshot()
        s.slots = []
        XCTAssertEqual(StatusPage.ordered(s).map(\.index), [1, 0])
    }

    func testAutoLinesAreMachineReadable() {
        XCTAssertEqual(StatusPage.auto(snapshot()),
                       "PeruserMultiplexers: alive=1 idle=1 max=4\n"
                       + "PeruserEnvironment: big alive=2 idle=0 max=10 connections=100 requests=120 dropped=0 "
                       + "availability=100 waiting=0 reading=1 shed=0 h2=1\n"
                       + "PeruserEnvironment: small alive=0 idle=0 max=3 connections=7 requests=9 dropped=1 "
                       + "availability=90 waiting=2 reading=0 shed=3 h2=0\n")
    }

    func testEscapingCoversEveryMarkupCharacter() {
        XCTAssertEqual(StatusPage.escape("<a href=\"x\">'&'</a>"),
                       "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;")
        var s = snapshot()
        s.environments[0].name = "<script>"
        XCTAssertFalse(StatusPage.childTable(s).contains("<script>"))
        XCTAssertFalse(StatusPage.statistics(s).contains("<script>"))
    }

    func testScoreboardNames() {
        XCTAssertEqual((0...10).map(StatusPage.scoreboardName),
                       ["DEAD", "STARTING", "READY", "BUSY_READ", "BUSY_WRITE", "BUSY_KEEPALIVE", "BUSY_LOG",
                        "BUSY_DNS", "CLOSING", "GRACEFUL", "IDLE_KILL"])
        XCTAssertEqual(StatusPage.scoreboardName(99), "UNKNOWN")
    }

    func testAnEnvironmentIndexOutOfRangeRendersAsUnknown() {
        var s = snapshot()
        s.slots.append(StatusSnapshot.Slot(id: 5, pid: 15, status: .ready, scoreboardState: 2, type: .worker, environment: 9))
        XCTAssertTrue(rows(StatusPage.childTable(s)).contains {
            $0.hasPrefix("<tr><td>5</td>") && $0.contains("<td>(null)</td><td>0/0/0</td><td>0%</td>")
        })
    }
}
