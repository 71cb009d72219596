@testable import PeruserCore
import XCTest

final class ImageConfigurationTests: XCTestCase {
    let tree = [
        ConfigurationNode("ServerRoot", "\"/etc/apache2\""),
        ConfigurationNode("SSLSessionCache", "shmcb:/run/apache2/ssl_scache(512000)"),
        ConfigurationNode("<Processor", "alice>", children: [ConfigurationNode("User", "alice")]),
        ConfigurationNode("<VirtualHost", "127.0.0.1:443>", children: [
            ConfigurationNode("ServerName", "a.test"),
            ConfigurationNode("ServerAlias", "www.a.test"),
            ConfigurationNode("ServerEnvironment", "alice"),
            ConfigurationNode("SSLEngine", "on"),
            ConfigurationNode("SSLCertificateFile", "/keys/a.crt"),
            ConfigurationNode("SSLCertificateKeyFile", "/keys/a.key"),
            ConfigurationNode("SetEnv", "DB_PASSWORD alice-secret"),
            ConfigurationNode("<Directory", "/srv/a>", children: [ConfigurationNode("Require", "all granted")]),
        ], environment: 0),
        ConfigurationNode("<VirtualHost", "127.0.0.1:443>", children: [
            ConfigurationNode("ServerName", "b.test"),
            ConfigurationNode("ServerPath", "/b"),
            ConfigurationNode("ServerEnvironment", "bob"),
            ConfigurationNode("SSLEngine", "on"),
            ConfigurationNode("SSLCertificateKeyFile", "/keys/b.key"),
            ConfigurationNode("SetEnv", "DB_PASSWORD bob-secret"),
            ConfigurationNode("CustomLog", "/var/log/b.log combined"),
        ], environment: 1),
        ConfigurationNode("<VirtualHost", "*:80>", children: [ConfigurationNode("ServerName", "orphan.test")]),
    ]

    func testAnEnvironmentsImageHasItsOwnVhostsWholeAndOthersAsStubs() {
        let text = ImageConfiguration.render(tree, for: .environment(0), preamble: ["LoadModule x_module /x.so"],
                                             sslLoaded: true)
        XCTAssertTrue(text.contains("LoadModule x_module /x.so\n"))
        XCTAssertTrue(text.contains("SetEnv DB_PASSWORD alice-secret"))
        XCTAssertTrue(text.contains("SSLCertificateKeyFile /keys/a.key"))
        XCTAssertTrue(text.contains("    <Directory /srv/a>\n        Require all granted\n    </Directory>\n"))
        XCTAssertFalse(text.contains("bob-secret"))
        XCTAssertFalse(text.contains("/keys/b.key"))
        XCTAssertFalse(text.contains("/var/log/b.log"))
        // B's stub routes as B's vhost does, and speaks TLS with A's own certificate (mod_ssl
        // decides TLS by the address's first vhost, before SNI).
        XCTAssertTrue(text.contains("<VirtualHost 127.0.0.1:443>\n    ServerName b.test\n    ServerPath /b\n"
                                    + "    ServerEnvironment bob\n    SSLEngine on\n    SSLCertificateFile /keys/a.crt\n"
                                    + "    SSLCertificateKeyFile /keys/a.key\n</VirtualHost>\n"), text)
        XCTAssertTrue(text.contains("<VirtualHost *:80>\n    ServerName orphan.test\n    SSLEngine off\n</VirtualHost>"))
        XCTAssertTrue(text.contains("SSLSessionCache shmcb"))  // global configuration stays
        XCTAssertTrue(text.contains("<Processor alice>\n    User alice\n</Processor>\n"))
    }

    func testTheMultiplexersImageHasOnlyStubsAndNoSSL() {
        let text = ImageConfiguration.render(tree, for: .multiplexers, preamble: [], sslLoaded: true)
        for secret in ["alice-secret", "bob-secret", "/keys/", "SSL", "Require"] {
            XCTAssertFalse(text.contains(secret), secret)
        }
        XCTAssertTrue(text.contains("ServerName a.test\n    ServerAlias www.a.test\n    ServerEnvironment alice\n"))
    }

    func testAnEnvironmentWithoutTLSHasStubsWithoutIt() {
        let text = ImageConfiguration.render(tree.filter { !$0.isVirtualHostOf(0) }, for: .environment(1),
                                             preamble: [], sslLoaded: true)
        XCTAssertTrue(text.contains("/keys/b.key"))
        let plain = ImageConfiguration.render(tree, for: .environment(7), preamble: [], sslLoaded: true)
        XCTAssertTrue(plain.contains("ServerName a.test\n    ServerAlias www.a.test\n    ServerEnvironment alice\n"
                                     + "    SSLEngine off\n"), plain)
        XCTAssertFalse(plain.contains("/keys/"))
    }

    /// A vhost of environment `environment` on `address`, named `name` and www.`name`.
    func tenant(_ name: String, _ environment: Int, _ address: String = "127.0.0.1:80>",
                extra: [ConfigurationNode] = []) -> ConfigurationNode {
        ConfigurationNode("<VirtualHost", address, children: [
            ConfigurationNode("ServerName", name), ConfigurationNode("ServerAlias", "www.\(name) *.\(name)"),
            ConfigurationNode("ServerEnvironment", "e\(environment)"),
            ConfigurationNode("DocumentRoot", "/srv/\(name)"),
        ] + extra, environment: environment)
    }

    func testConsecutiveStubsOfOtherEnvironmentsBecomeOneVhostInTheirPlace() {
        let tree = [tenant("a.test", 0), tenant("b.test", 1), tenant("c.test", 2), tenant("own.test", 3),
                    tenant("x.test", 4), ConfigurationNode("<Processor", "e5>", children: [ConfigurationNode("User", "u5")]),
                    tenant("d.test", 4), tenant("e.test", 5),
                    tenant("path.test", 6, extra: [ConfigurationNode("ServerPath", "/p")]),
                    tenant("f.test", 7), tenant("other-port.test", 8, "127.0.0.1:81>"), tenant("g.test", 9)]
        let text = ImageConfiguration.render(tree, for: .environment(3), preamble: [], sslLoaded: false)
        let one = """
            <VirtualHost 127.0.0.1:80>
                ServerName a.test
                ServerAlias www.a.test *.a.test
                ServerEnvironment e0
                ServerAlias b.test
                ServerAlias www.b.test *.b.test
                ServerAlias c.test
                ServerAlias www.c.test *.c.test
            </VirtualHost>

            """
        XCTAssertTrue(text.contains(one), text)
        // E's own vhost keeps its place between the runs; other directives stay where they are
        // (the run is written at its first stub); the next run is x, d and e (a ServerPath stub
        // on the same address ends it); a vhost on other addresses does not: f and g are one.
        XCTAssertTrue(text.contains("    DocumentRoot /srv/own.test\n</VirtualHost>\n<VirtualHost 127.0.0.1:80>\n"
                                    + "    ServerName x.test\n    ServerAlias www.x.test *.x.test\n    ServerEnvironment e4\n"
                                    + "    ServerAlias d.test\n    ServerAlias www.d.test *.d.test\n    ServerAlias e.test\n"
                                    + "    ServerAlias www.e.test *.e.test\n</VirtualHost>\n<Processor e5>\n    User u5\n</Processor>\n"
                                    + "<VirtualHost"), text)
        XCTAssertTrue(text.contains("    ServerName path.test\n    ServerAlias www.path.test *.path.test\n"
                                    + "    ServerEnvironment e6\n    ServerPath /p\n</VirtualHost>"), text)
        XCTAssertTrue(text.contains("    ServerName f.test\n    ServerAlias www.f.test *.f.test\n"
                                    + "    ServerEnvironment e7\n    ServerAlias g.test\n    ServerAlias www.g.test *.g.test\n"
                                    + "</VirtualHost>\n<VirtualHost 127.0.0.1:81>"), text)
        XCTAssertEqual(text.components(separatedBy: "<VirtualHost").count - 1, 6, text)
        XCTAssertFalse(text.contains("/srv/a.test"))
        // Every name still reaches a stub.
        for name in ["a", "b", "c", "d", "e", "f", "g", "x", "path", "other-port"] {
            XCTAssertTrue(text.contains(" \(name).test\n"), name)
            XCTAssertTrue(text.contains(" www.\(name).test *.\(name).test\n"), name)
        }
        // The multiplexers route by each vhost's environment: no merging there.
        let routing = ImageConfiguration.render(tree, for: .multiplexers, preamble: [], sslLoaded: false)
        XCTAssertEqual(routing.components(separatedBy: "<VirtualHost").count - 1, tree.count - 1)
    }

    func testAStubWithAssignUserIDStaysAloneForItDeclaresAnEnvironment() {
        func itk(_ name: String, _ user: String, _ environment: Int) -> ConfigurationNode {
            ConfigurationNode("<VirtualHost", "*:80>", children: [
                ConfigurationNode("ServerName", name), ConfigurationNode("AssignUserID", "\(user) \(user)"),
            ], environment: environment)
        }
        let tree = [tenant("a.test", 0, "*:80>"), itk("b.test", "bob", 1), itk("c.test", "carol", 2), tenant("own.test", 3, "*:80>")]
        let text = ImageConfiguration.render(tree, for: .environment(3), preamble: [], sslLoaded: false)
        XCTAssertTrue(text.contains("""
            <VirtualHost *:80>
                ServerName a.test
                ServerAlias www.a.test *.a.test
                ServerEnvironment e0
            </VirtualHost>
            <VirtualHost *:80>
                ServerName b.test
                AssignUserID bob bob
            </VirtualHost>
            <VirtualHost *:80>
                ServerName c.test
                AssignUserID carol carol
            </VirtualHost>

            """), text)
        XCTAssertFalse(ImageConfiguration.mergeable(itk("b.test", "bob", 1)))
    }

    func testATenantsPlainAndTLSVhostsMergeByAddress() {
        let tls = [ConfigurationNode("SSLEngine", "on")]
        var tree: [ConfigurationNode] = []
        for (n, name) in ["a", "b", "own", "c", "d"].enumerated() {
            tree.append(tenant("\(name).test", n, "*:80>"))
            tree.append(tenant("\(name).test", n, "*:443>", extra: tls))
        }
        let text = ImageConfiguration.render(tree, for: .environment(2), preamble: [], sslLoaded: false)
        // a and b on :80 as one, a and b on :443 as one, own's two, c and d on each port as one.
        XCTAssertEqual(text.components(separatedBy: "<VirtualHost").count - 1, 6, text)
        XCTAssertTrue(text.contains("<VirtualHost *:80>\n    ServerName a.test\n    ServerAlias www.a.test *.a.test\n"
                                    + "    ServerEnvironment e0\n    ServerAlias b.test\n"), text)
        XCTAssertTrue(text.contains("<VirtualHost *:443>\n    ServerName a.test\n    ServerAlias www.a.test *.a.test\n"
                                    + "    ServerEnvironment e0\n    ServerAlias b.test\n"), text)
        // In each address's order, own's vhost still comes after a and b and before c and d.
        let own80 = text.range(of: "DocumentRoot /srv/own.test")!.lowerBound
        XCTAssertLessThan(text.range(of: "ServerAlias b.test")!.lowerBound, own80)
        XCTAssertGreaterThan(text.range(of: "ServerName c.test")!.lowerBound, own80)
    }

    func testOnlyAddressesThatCannotMeetAreApart() {
        let apart = [("127.0.0.1:80>", "127.0.0.1:443>"), ("*:80>", "*:443>"), ("127.0.0.1:80>", "127.0.0.2:80>"),
                     ("[::1]:80>", "[::2]:80>"), ("127.0.0.1:80 127.0.0.1:81>", "*:443>")]
        let together = [("*:80>", "127.0.0.1:80>"), ("*>", "*:443>"), ("_default_:80>", "127.0.0.1:80>"),
                        ("www.example.com:80>", "127.0.0.1:80>"), ("127.0.0.1:80>", "[::1]:80>"),
                        ("0.0.0.0:80>", "127.0.0.1:80>"), ("127.0.0.1:80 127.0.0.1:443>", "*:443>"), ("127.0.0.1:*>", "127.0.0.1:80>"),
                        ("[::]:80>", "[::1]:80>"), (">", "*:80>")]
        for (a, b) in apart {
            XCTAssertFalse(ImageConfiguration.addressesMayOverlap(a, b), "\(a) \(b)")
            XCTAssertFalse(ImageConfiguration.addressesMayOverlap(b, a), "\(b) \(a)")
        }
        for (a, b) in together {
            XCTAssertTrue(ImageConfiguration.addressesMayOverlap(a, b), "\(a) \(b)")
            XCTAssertTrue(ImageConfiguration.addressesMayOverlap(b, a), "\(b) \(a)")
        }
    }

    func testStubsWhoseNamesMeanSomethingElseAsAliasesStayAlone() {
        for name in ["https://x.test", "x.test:8080", "*.x.test"] {
            XCTAssertFalse(ImageConfiguration.mergeable(tenant(name, 1)), name)
        }
        XCTAssertTrue(ImageConfiguration.mergeable(tenant("x.test", 1)))
        let unnamed = ConfigurationNode("<VirtualHost", "*:80>", children: [ConfigurationNode("ServerEnvironment", "e1")],
                                        environment: 1)
        XCTAssertFalse(ImageConfiguration.mergeable(unnamed))
        let inherited = ConfigurationNode("<VirtualHost", "*:80>", children: [ConfigurationNode("ServerName", "x.test")],
                                          environment: 1)
        XCTAssertFalse(ImageConfiguration.mergeable(inherited))
        let proxied = tenant("x.test", 1, extra: [ConfigurationNode("RemoteIPHeader", "X-Forwarded-For")])
        XCTAssertFalse(ImageConfiguration.mergeable(proxied))
    }

    func testARunOfTLSStubsSpeaksTLSWithTheImagesOwnCertificate() {
        let tls = [ConfigurationNode("SSLEngine", "on"), ConfigurationNode("SSLCertificateFile", "/keys/x.crt")]
        let tree = [tenant("own.test", 0, "127.0.0.1:443>", extra: tls),
                    tenant("b.test", 1, "127.0.0.1:443>", extra: tls), tenant("c.test", 2, "127.0.0.1:443>", extra: tls),
                    tenant("d.test", 3, "127.0.0.1:443>")]
        let text = ImageConfiguration.render(tree, for: .environment(0), preamble: [], sslLoaded: true)
        XCTAssertTrue(text.contains("ServerAlias www.c.test *.c.test\n    SSLEngine on\n"
                                    + "    SSLCertificateFile /keys/x.crt\n</VirtualHost>\n"
                                    + "<VirtualHost 127.0.0.1:443>\n    ServerName d.test\n"), text)
        XCTAssertTrue(text.contains("ServerEnvironment e3\n    SSLEngine off\n</VirtualHost>"), text)
    }

    func testTheMultiplexersImageLoadsNoLanguageRuntime() {
        let tree = [
            ConfigurationNode("PHPIniDir", "/etc/php", module: "php_module"),
            ConfigurationNode("<Directory", "/srv>", children: [
                ConfigurationNode("php_admin_value", "open_basedir /srv", module: "php_module"),
                ConfigurationNode("Require", "all granted", module: "authz_core_module"),
            ]),
            ConfigurationNode("KeepAlive", "On"),
            tenant("a.test", 0, extra: [ConfigurationNode("php_value", "memory_limit 64M", module: "php_module")]),
        ]
        let preamble = ["LoadModule authz_core_module \"/m/mod_authz_core.so\"", "LoadModule php_module \"/m/libphp8.2.so\"",
                        "LoadModule perl_module /m/mod_perl.so", "LoadModule ssl_module /m/mod_ssl.so"]
        let routing = ImageConfiguration.render(tree, for: .multiplexers, preamble: preamble, sslLoaded: false)
        for gone in ["php", "PHP"] { XCTAssertFalse(routing.contains(gone), routing) }
        XCTAssertTrue(routing.contains("LoadModule ssl_module /m/mod_ssl.so\n"), routing)
        XCTAssertTrue(routing.contains("LoadModule perl_module /m/mod_perl.so\n"), routing)
        XCTAssertTrue(routing.contains("LoadModule authz_core_module \"/m/mod_authz_core.so\"\n"))
        XCTAssertTrue(routing.contains("<Directory /srv>\n    Require all granted\n</Directory>\nKeepAlive On\n"), routing)
        let own = ImageConfiguration.render(tree, for: .environment(0), preamble: preamble, sslLoaded: false)
        for kept in ["LoadModule php_module", "LoadModule perl_module", "LoadModule ssl_module", "PHPIniDir /etc/php", "php_admin_value open_basedir",
                     "php_value memory_limit 64M"] {
            XCTAssertTrue(own.contains(kept), kept)
        }
    }

    func testWithoutModSSLStubsSayNothingOfIt() {
        let text = ImageConfiguration.render(tree, for: .environment(1), preamble: [], sslLoaded: false)
        XCTAssertTrue(text.contains("ServerEnvironment alice\n</VirtualHost>"), text)
        XCTAssertTrue(text.contains("bob-secret"))
        XCTAssertFalse(text.contains("alice-secret"))
    }
}

extension ConfigurationNode {
    func isVirtualHostOf(_ environment: Int) -> Bool {
        directive == "<VirtualHost" && self.environment == environment
    }
}

final class ImageMessageTests: XCTestCase {
    func decode(_ bytes: [UInt8], slots: Int = 10, pages: Int = 10) -> ImageMessage? {
        bytes.withUnsafeBytes { ImageMessage.decode($0, slots: slots, pages: pages) }
    }

    func testMessagesRoundTrip() {
        for message in [ImageMessage.handoffEnd(environment: 2), .handbackEnd(environment: 0),
                        .previousHandback(environment: 9), .spawn(slot: 3, page: 9), .ready,
                        .spawned(slot: 9, pid: 4242), .failed(slot: 0, errno: 12)] {
            XCTAssertEqual(decode(message.bytes), message)
        }
    }

    func testOutOfBoundsAndMalformedAreRefused() {
        XCTAssertNil(decode(ImageMessage.spawn(slot: 10, page: 0).bytes))
        XCTAssertNil(decode(ImageMessage.spawn(slot: 0, page: 10).bytes))
        XCTAssertNil(decode(ImageMessage.spawned(slot: 1, pid: 1).bytes))
        XCTAssertNil(decode(ImageMessage.spawned(slot: 1, pid: -5).bytes))
        XCTAssertNil(decode(Array(ImageMessage.ready.bytes.dropLast())))
        XCTAssertNil(decode([99] + [UInt8](repeating: 0, count: 15)))
        XCTAssertNil(ImageMessage.handoffEnd(environment: 3).bytes.withUnsafeBytes {
            ImageMessage.decode($0, slots: 10, pages: 10, environments: 3)
        })
    }
}
