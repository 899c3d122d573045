import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.reindex.ReindexPlugin;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * One OpenSearch node whose modules are classes on the classpath, not plugin
 * folders of a distribution: Maven Central serves the jars but no tarball.
 * Node's protected constructor takes plugin classes, as the test framework's
 * MockNode does. Settings come from $home/config/opensearch.yml.
 *   java -cp 'lib/*:classes' ClasspathNode HOME
 */
public final class ClasspathNode extends Node {
    private static final List<Class<? extends Plugin>> MODULES =
            List.of(Netty4Plugin.class, CommonAnalysisPlugin.class, ReindexPlugin.class);

    private ClasspathNode(Environment environment) {
        super(environment, MODULES, true);
    }

    public static void main(String[] args) throws Exception {
        Path home = Paths.get(args[0]).toAbsolutePath();
        Settings settings = Settings.builder().put("path.home", home.toString()).build();
        Environment environment = InternalSettingsPreparer.prepareEnvironment(
                settings, Map.of(), home.resolve("config"), () -> "mailyard-node");
        Node node = new ClasspathNode(environment);
        CountDownLatch stopped = new CountDownLatch(1);
        // SIGTERM (opensearch.sh stop) closes the node cleanly: shards flushed, lock released.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            }
            stopped.countDown();
        }, "node-shutdown"));
        node.start();
        stopped.await();
    }
}
