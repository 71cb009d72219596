import PeruserCore
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
